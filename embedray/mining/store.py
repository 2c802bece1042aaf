"""Published negative pools: ``pools/pool-v{N}.json`` written atomically, ``LATEST`` last.

Readers only ever see complete pools, and versions only increase (a number a crash left
behind is never reused)."""
from __future__ import annotations

import os
import re
from pathlib import Path

from embedray.atomic import write_text_atomic
from embedray.mining.pool import NegativePool


class PoolStore:
    """A folder of versioned negative pools."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._meta: dict[int, dict] = {}  # published pools never change: each is read once

    def path(self, version: int) -> Path:
        return self.root / f"pool-v{int(version)}.json"

    def latest_version(self) -> int:
        """Newest published version; 0 before the first publish."""
        try:
            return int((self.root / "LATEST").read_text().strip())
        except FileNotFoundError:
            return 0

    def next_version(self) -> int:
        seen = [int(m.group(1)) for p in self.root.glob("pool-v*.json")
                if (m := re.fullmatch(r"pool-v(\d+)\.json", p.name))]
        return max([self.latest_version(), *seen]) + 1

    def publish(self, pool: NegativePool) -> int:
        if pool.version <= self.latest_version():
            raise ValueError(f"{self.root}: pool v{pool.version} is not newer than v{self.latest_version()}")
        pool.save(self.path(pool.version))
        write_text_atomic(f"{pool.version}\n", self.root / "LATEST")
        return pool.version

    def load(self, version: int) -> NegativePool:
        return NegativePool.load(self.path(version))

    def meta(self, version: int) -> dict:
        """The provenance of published pool ``version`` (snapshot step, weights fingerprint, ...)."""
        if version not in self._meta:
            self._meta[version] = self.load(version).meta
        return self._meta[version]

    def _newest_first(self):
        """(version, snapshot step) of the published pools, newest first (a pool without a
        snapshot step was mined before training: step 0)."""
        for version in range(self.latest_version(), 0, -1):
            if self.path(version).exists():  # a number a crashed refresh used is skipped
                yield version, int(self.meta(version).get("snapshot_step") or 0)

    def latest_version_at(self, step: int) -> int:
        """Newest published version mined from weights of step ``step`` or earlier; 0 if none.

        Training at ``step`` may use only these: a run resumed from a checkpoint passes over the
        pools that its killed attempt published ahead of it until its own steps reach them, as
        the uninterrupted run would have.
        """
        return next((v for v, snap in self._newest_first() if snap <= step), 0)

    def published_for(self, step: int, weights_fingerprint: str, recipe: str) -> int | None:
        """The version of a pool already mined at snapshot ``step`` from these very weights with
        this mining ``recipe`` (a killed attempt's, which a resumed run re-snapshots), or None."""
        for version, snap in self._newest_first():
            if snap < step:
                return None  # newer pools come from later snapshots: an older match is from another lineage
            meta = self.meta(version)
            if (snap == step and meta.get("weights_fingerprint") == weights_fingerprint
                    and meta.get("recipe") == recipe and "telemetry" in meta):
                return version
        return None
