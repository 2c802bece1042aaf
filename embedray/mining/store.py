"""Published negative pools: ``pools/pool-v{N}.json`` written atomically, ``LATEST`` last.

Readers only ever see complete pools, and versions only increase (a number a crash left
behind is never reused)."""
from __future__ import annotations

import os
import re
from pathlib import Path

from embedray.mining.pool import NegativePool


class PoolStore:
    """A folder of versioned negative pools."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

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
        tmp = self.root / f".LATEST.tmp-{os.getpid()}"
        tmp.write_text(f"{pool.version}\n")
        os.replace(tmp, self.root / "LATEST")
        return pool.version

    def load(self, version: int) -> NegativePool:
        return NegativePool.load(self.path(version))
