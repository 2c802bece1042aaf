"""Evaluation reports: a markdown table for the terminal and README, JSON written atomically."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

#: how column keys are shown in table headers
HEADERS = {"ndcg": "nDCG", "recall": "Recall", "mrr": "MRR", "docs/s": "docs/s",
           "num_queries": "queries"}


def _header(column: str) -> str:
    name, _, cut = column.partition("@")
    return HEADERS.get(name, name) + (f"@{cut}" if cut else "")


def _cell(value: Any, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.1f}" if column.endswith("/s") or column.endswith("_s") else f"{value:.4f}"
    return str(value)


def format_table(rows: Mapping[str, Mapping[str, Any]],
                 columns: Sequence[str] = ("ndcg@10", "recall@100", "mrr@10"),
                 name_header: str = "model") -> str:
    """A fixed-width markdown table, one row per name.

    Args:
        rows: ``name -> metrics`` (e.g. ``{"minilm-l6": {"ndcg@10": 0.645, ...}}``).
        columns: metric keys to show, in order; a missing one shows ``-``. Metrics print with 4
            decimals, rates (keys ending in ``/s``) with 1.
        name_header: header of the first column.

    Returns:
        The table as a string (no trailing newline).
    """
    header = [name_header, *(_header(c) for c in columns)]
    body = [[str(name), *(_cell(m.get(c), c) for c in columns)] for name, m in rows.items()]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:]))
        return "| " + " | ".join([first, *rest]) + " |"

    rule = "|" + "|".join(["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]]) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in body)])
