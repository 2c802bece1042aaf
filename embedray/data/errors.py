"""Input errors that name the file, line and field, and the skip-and-count policy."""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

OnError = Literal["raise", "skip"]
log = logging.getLogger(__name__)


class DataError(ValueError):
    """A bad input row: ``file:line: field: what is wrong (what to do)``."""

    def __init__(self, path: str | Path, line: int | str | None, field_name: str | None, message: str):
        # ``line`` is a line number, or a label such as ``"row 12"`` for Parquet rows.
        self.path, self.line, self.field, self.reason = str(path), line, field_name, message
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"field '{field_name}': {message}" if field_name else message
        super().__init__(f"{where}: {what}")


@dataclass
class SkipReport:
    """Counts of rows skipped in ``skip`` mode, by reason; nothing is dropped uncounted."""

    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, err: DataError) -> None:
        self.skipped[reason_key(err)] += 1
        if len(self.examples) < 5:
            self.examples.append(str(err))

    @property
    def total(self) -> int:
        return sum(self.skipped.values())

    def merge(self, other: SkipReport) -> None:
        """Add ``other``'s counts (and first examples) to this report."""
        self.skipped.update(other.skipped)
        self.examples.extend(other.examples[: max(0, 5 - len(self.examples))])

    def summary(self, examples: int = 3) -> str:
        """One line: the total, the counts by reason and the first ``examples`` ``file:line`` errors."""
        if not self.total:
            return "no rows skipped"
        parts = ", ".join(f"{n} × {why}" for why, n in self.skipped.most_common())
        return f"skipped {self.total} bad rows ({parts}); first: {'; '.join(self.examples[:examples])}"

    def as_dict(self) -> dict:
        """``{"total", "by_reason", "examples"}`` for JSON reports."""
        return {"total": self.total, "by_reason": dict(self.skipped.most_common()),
                "examples": list(self.examples)}


def reason_key(err: DataError) -> str:
    """The reason without details or quoted values, so that e.g. every duplicate id counts under
    one ``duplicate id`` key rather than one key per id."""
    return re.sub(r"\s*'[^']*'", "", err.reason.split(" (")[0]).strip()


def handle(err: DataError, on_error: OnError, report: SkipReport | None) -> None:
    """Raise ``err`` in ``raise`` mode; count it (and log it once per reason) in ``skip`` mode."""
    if on_error == "raise":
        raise err
    if on_error != "skip":
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if report is not None:
        first = report.skipped[reason_key(err)] == 0
        report.add(err)
        if first:
            log.warning("skipping bad row: %s", err)
