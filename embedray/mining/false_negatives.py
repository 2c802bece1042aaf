"""Known false negatives and what a denoiser does with them.

A mined negative is a false negative when it answers the query as well as the labelled
positive. Where the truth is known — a document planted in the corpus as a duplicate of a
training positive — :func:`planted_report` counts how many of them the miner selected, how
many a denoiser removed (its recall) and how many other negatives it removed with them (its
cost). :func:`duplicate_pairs` finds such duplicates in real package descriptions: packages
whose descriptions are identical up to case and spacing (Debian's transitional and
metapackages), or identical once version numbers are masked (versioned library packages).
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from embedray.mining.pool import NegativePool

_DIGITS = re.compile(r"\d+")


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def _rank(name: str, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{name}".encode()).hexdigest()


@dataclass(frozen=True)
class DuplicatePair:
    """``query``'s description duplicated by ``duplicate``'s: ``exact`` (case and spacing aside)
    or ``versioned`` (the same once every number is masked)."""

    query: str
    duplicate: str
    kind: str


def duplicate_pairs(packages: Mapping[str, tuple[str, str]], seed: int = 0) -> list[DuplicatePair]:
    """One pair per group of packages whose descriptions duplicate each other.

    Args:
        packages: name → (summary, description).
        seed: which two members of a group form its pair (ascending ``sha1(seed:name)``).

    Returns:
        Pairs whose two summaries differ (else the two queries would be the same too), exact
        groups first, each kind in a stable order. A package is in at most one pair.
    """
    usable = {n: (s, d) for n, (s, d) in packages.items() if s and d}
    by_text: dict[str, list[str]] = {}
    by_masked: dict[str, set[str]] = {}
    for name, (_, desc) in usable.items():
        by_text.setdefault(_norm(desc), []).append(name)
        by_masked.setdefault(_DIGITS.sub("#", _norm(desc)), set()).add(_norm(desc))
    pairs, used = [], set()

    def take(names: list[str], kind: str) -> None:
        names = sorted((n for n in names if n not in used), key=lambda n: _rank(n, seed))
        for i, a in enumerate(names):
            b = next((b for b in names[i + 1:] if _norm(usable[b][0]) != _norm(usable[a][0])), None)
            if b is not None:
                pairs.append(DuplicatePair(a, b, kind))
                used.update((a, b))
                return

    for text in sorted(by_text):
        if len(by_text[text]) > 1:
            take(by_text[text], "exact")
    for masked in sorted(by_masked):
        texts = sorted(by_masked[masked])
        if len(texts) > 1:  # several different descriptions that differ only in their numbers
            take([by_text[t][0] for t in texts], "versioned")
    return pairs


def planted_report(before: NegativePool, after: NegativePool, planted: Mapping[str, set[str]],
                   known: Mapping[str, set[str]] | None = None) -> dict:
    """What a denoiser did to a pool whose false negatives are known.

    Args:
        before: the pool as mined, undenoised (every candidate the denoiser looked at).
        after: the same queries' pool after denoising.
        planted: query id → the documents known to be false negatives of it (those counted).
        known: every known false negative (default ``planted``): the "other" negatives are the
            rest, so that counting one kind of planted duplicate does not count the others as
            ordinary negatives.

    Returns:
        ``planted`` (known false negatives in the corpus), ``selected`` (how many of them the miner
        put in ``before``), ``removed`` (of those, how many are not in ``after``), ``recall``
        (removed / selected), ``others_selected`` / ``others_removed`` (the other negatives,
        before and removed) and ``cost`` (others_removed / others_selected).
    """
    known = planted if known is None else known
    selected = removed = others = others_removed = 0
    for q, negs in before.negatives.items():
        counted, skip = planted.get(q, set()), known.get(q, set())
        kept = {d for d, _ in after.negatives.get(q, [])}
        for d, _ in negs:
            if d in counted:
                selected += 1
                removed += d not in kept
            elif d not in skip:
                others += 1
                others_removed += d not in kept
    return {"planted": sum(len(v) for v in planted.values()), "selected": selected, "removed": removed,
            "recall": removed / selected if selected else None, "others_selected": others,
            "others_removed": others_removed, "cost": others_removed / others if others else None}
