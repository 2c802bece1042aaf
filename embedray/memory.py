"""How much memory this process has used: what the scale benchmarks and the telemetry report."""
from __future__ import annotations

import resource


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> dict[str, float]:
    """This process's resident memory now, in MiB: ``anon`` (its own heap, what grows per
    process) and ``file`` (pages of mapped files, e.g. memory-mapped Arrow stores, which the
    operating system shares between the processes that map the same file)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                fields[key[3:].lower()] = int(value.split()[0]) / 1024
    return fields
