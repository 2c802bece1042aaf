"""The built-in real dataset: Debian package descriptions as a retrieval task.

apt keeps the English package descriptions in ``/var/lib/apt/lists/*_Translation-en*`` (deb822
paragraphs with ``Package:`` and ``Description-en:``). A package's one-line summary is the query
and its long description the relevant document (the summary never appears in the document).
:func:`build_debian` turns them into a BEIR folder with deterministic train/dev/test splits, plus
``train.jsonl`` (FlagEmbedding) and ``train_pairs.jsonl`` (ids) for the trainers, and, from the
``*_Packages`` lists beside them, ``labels.jsonl``: each document's ``Section`` (utils, libs,
net, admin, devel, …) for the classification objective, with the document's split.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import lzma
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from embedray.atomic import write_json_atomic
from embedray.data.beir import Document, write_beir
from embedray.data.flag import FlagExample, write_flag_jsonl
from embedray.data.jsonl import write_jsonl_atomic

log = logging.getLogger(__name__)

DEFAULT_LISTS_DIR = "/var/lib/apt/lists"
APT_HELPER = "/usr/lib/apt/apt-helper"
SPLITS = (("train", 0.8), ("dev", 0.1), ("test", 0.1))
SPLIT_RULE = ("split by the first 32 bits of sha1(package name) / 2^32: < 0.8 train, < 0.9 dev, "
              "else test (independent of the seed)")
SELECT_RULE = ("under --max-queries/--split-queries/--max-docs, queries (per split: its own cap, "
               "else 80/10/10 of --max-queries) and "
               "distractor documents are taken in ascending order of sha1(f'{seed}:{package}')")
# Translation-en plus apt's compressed variants; not Translation-en_GB etc.
_TRANSLATION_RE = re.compile(r"Translation-en(\.(gz|xz|lz4|bz2|zst))?$")
_PACKAGES_RE = re.compile(r"_Packages(\.(gz|xz|lz4|bz2|zst))?$")


@dataclass
class DebianStats:
    """What :func:`build_debian` read, dropped and wrote.

    Attributes:
        out_dir: the BEIR folder written.
        source_files: the Translation-en files read, in reading order.
        entries_read: deb822 paragraphs read from all files.
        repeated_entries: paragraphs ignored because an earlier file (or paragraph) had the package.
        packages: distinct package names with a description.
        dropped: packages dropped, by reason (``empty summary``, ``empty description``,
            ``duplicate summary``, ``duplicate description``).
        usable_pairs: packages left after the drops (each one a query/document pair).
        queries: queries written per split.
        corpus: documents written.
        labelled: corpus documents with a ``Section`` label in ``labels.jsonl`` (0 when apt's
            ``*_Packages`` lists are not there).
        sections: distinct sections among them.
        seconds: wall time of the build.
    """

    out_dir: Path
    source_files: list[str] = field(default_factory=list)
    entries_read: int = 0
    repeated_entries: int = 0
    packages: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    usable_pairs: int = 0
    queries: dict[str, int] = field(default_factory=dict)
    corpus: int = 0
    labelled: int = 0
    sections: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """A few human-readable lines with every count."""
        drops = ", ".join(f"{n} {why}" for why, n in self.dropped.items()) or "none"
        splits = ", ".join(f"{s} {n}" for s, n in self.queries.items())
        return (f"read {self.entries_read} entries from {len(self.source_files)} file(s): "
                f"{self.packages} packages ({self.repeated_entries} repeated entries ignored)\n"
                f"dropped: {drops}\n"
                f"usable pairs: {self.usable_pairs}; queries: {splits}; corpus: {self.corpus} docs\n"
                + (f"labels: {self.labelled} docs in {self.sections} sections (labels.jsonl)\n" if self.labelled else "")
                +
                f"wrote {self.out_dir} in {self.seconds:.1f} s")


# --- reading apt's lists ---------------------------------------------------------------------

def find_translation_files(lists_dir: str | Path) -> list[Path]:
    """The ``*Translation-en*`` files directly in ``lists_dir``, sorted by name."""
    root = Path(lists_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_file() and _TRANSLATION_RE.search(p.name))


def find_packages_files(lists_dir: str | Path) -> list[Path]:
    """The binary ``*_Packages*`` lists directly in ``lists_dir``, sorted by name."""
    root = Path(lists_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_file() and _PACKAGES_RE.search(p.name))


def read_sections(files: Sequence[Path]) -> dict[str, str]:
    """``{package: section}`` from Packages lists (the first entry of a package wins); the
    archive area is dropped (``contrib/utils`` → ``utils``)."""
    sections: dict[str, str] = {}
    for path in files:
        with _open_lines(path) as lines:
            for para in iter_paragraphs(lines):
                name, section = (para.get("Package") or [""])[0], (para.get("Section") or [""])[0]
                if name and section and name not in sections:
                    sections[name] = section.rsplit("/", 1)[-1]
    return sections


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _apt_get() -> str | None:
    return shutil.which("apt-get")


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True)


def _ensure_translation_files(lists_dir: Path) -> list[Path]:
    """Find the Translation-en files; if there are none, fetch them with apt-get as root, or
    raise an error that gives the command to run."""
    files = find_translation_files(lists_dir)
    if files:
        return files
    cmd = ["apt-get", "update", "-o", "Acquire::Languages=en"]
    if lists_dir.resolve() != Path(DEFAULT_LISTS_DIR).resolve():
        cmd += ["-o", f"Dir::State::Lists={lists_dir.resolve()}"]
    apt_get = _apt_get()
    if apt_get is None or not _is_root():
        raise FileNotFoundError(
            f"no *Translation-en* files in {lists_dir}: the Debian dataset is built from apt's "
            f"English package descriptions. Run `sudo {' '.join(cmd)}` and try again"
            + ("" if apt_get else " (on a Debian or Ubuntu machine: apt-get is not installed here)"))
    (lists_dir / "partial").mkdir(parents=True, exist_ok=True)
    print(f"no *Translation-en* files in {lists_dir}; running: {' '.join(cmd)}", file=sys.stderr)
    _run([apt_get] + cmd[1:])
    files = find_translation_files(lists_dir)
    if not files:
        raise FileNotFoundError(
            f"`{' '.join(cmd)}` fetched no *Translation-en* files into {lists_dir}; check that "
            "/etc/apt/sources.list(.d) names a Debian or Ubuntu mirror")
    return files


@contextmanager
def _open_lines(path: Path) -> Iterator[Iterator[str]]:
    """Decompressed text lines of an apt lists file. apt-helper reads every format apt writes
    (.lz4, .gz, .xz, .zst, plain); without it, Python reads .gz/.xz/.bz2 and the lz4 tool .lz4."""
    decompress = None
    if Path(APT_HELPER).is_file() and os.access(APT_HELPER, os.X_OK):
        decompress = [APT_HELPER, "cat-file", str(path)]
    elif path.suffix == ".lz4" and shutil.which("lz4"):
        decompress = [shutil.which("lz4"), "-dc", str(path)]
    if decompress is not None:
        proc = subprocess.Popen(decompress, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, encoding="utf-8", errors="replace")
        try:
            yield proc.stdout
        except BaseException:
            proc.kill()
            raise
        finally:
            proc.stdout.close()
            err = proc.stderr.read()
            proc.stderr.close()
            code = proc.wait()
        if code != 0:
            raise RuntimeError(f"{path}: `{' '.join(decompress)}` failed: {err.strip()}")
        return
    openers = {".gz": gzip.open, ".xz": lzma.open, ".lz4": None, ".zst": None}
    if path.suffix == ".bz2":
        import bz2
        openers[".bz2"] = bz2.open
    opener = openers.get(path.suffix, open)
    if opener is None:
        raise RuntimeError(f"{path}: cannot decompress {path.suffix} without {APT_HELPER} "
                           "(install apt) or the lz4 tool")
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        yield f


def iter_paragraphs(lines: Iterator[str]) -> Iterator[dict[str, list[str]]]:
    """Parse deb822: yield each paragraph as ``{field: [first line, continuation lines...]}``.
    Continuation lines keep their leading whitespace (it carries Debian's formatting)."""
    para: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line.strip():
            if para:
                yield para
            para, current = {}, None
        elif line[0] in " \t":
            if current is not None:
                current.append(line)
        else:
            key, _, value = line.partition(":")
            current = para[key.strip()] = [value.strip()]
    if para:
        yield para


def undo_debian_formatting(continuation: Sequence[str]) -> str:
    """Turn a Debian long description back into plain text (Debian Policy §5.6.13).

    The one leading space is removed; `` .`` is a paragraph break; lines of a paragraph, wrapped
    at ~80 columns, are joined with spaces; lines starting with two or more spaces are verbatim
    (kept as their own line, minus the one space). Paragraphs and verbatim lines are joined
    with ``"\\n"``.
    """
    out: list[str] = []
    para: list[str] = []

    def flush() -> None:
        if para:
            out.append(" ".join(para))
            para.clear()

    for line in continuation:
        line = line.rstrip()
        body = line[1:]
        if body.strip() == "." and body.startswith("."):
            flush()
        elif body[:1] in (" ", "\t"):
            flush()
            if body.strip():
                out.append(body)
        elif body.strip():
            para.append(body.strip())
    flush()
    return "\n".join(out)


def read_descriptions(files: Sequence[Path], progress: bool = False
                      ) -> tuple[dict[str, tuple[str, str]], Counter]:
    """Read ``{package: (summary, long description)}`` from Translation files; the first entry of a
    package (in ``files`` order) wins. Returns the descriptions and counters of entries read,
    repeated and malformed (no ``Package`` or ``Description-en``)."""
    packages: dict[str, tuple[str, str]] = {}
    counts: Counter = Counter(entries=0, repeated=0, malformed=0)
    for path in files:
        with _open_lines(path) as lines, tqdm(desc=path.name[-60:], unit=" pkg", mininterval=0.5,
                                               disable=None if progress else True) as bar:
            for para in iter_paragraphs(lines):
                counts["entries"] += 1
                bar.update()
                name = (para.get("Package") or [""])[0]
                desc = para.get("Description-en")
                if not name or desc is None:
                    counts["malformed"] += 1
                elif name in packages:
                    counts["repeated"] += 1
                else:
                    packages[name] = (desc[0].strip(), undo_debian_formatting(desc[1:]))
    return packages, counts


# --- building the dataset --------------------------------------------------------------------

def _unit_hash(text: str) -> float:
    """A stable number in [0, 1) from sha1 (Python's hash() changes between processes)."""
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:8], 16) / 2**32


def split_of(package: str) -> str:
    """The split of a package: by sha1 of its name, 80 % train, 10 % dev, 10 % test."""
    h, edge = _unit_hash(package), 0.0
    for split, share in SPLITS:
        edge += share
        if h < edge:
            return split
    return SPLITS[-1][0]


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def drop_ambiguous(packages: dict[str, tuple[str, str]]) -> tuple[dict[str, tuple[str, str]], Counter]:
    """Drop packages with an empty summary or description, and every package whose summary or
    description (case and spacing ignored) another package shares: such a query has several
    equally right answers. Returns the kept packages and the drop counts by reason."""
    dropped: Counter = Counter()
    full = {}
    for name, (summary, desc) in packages.items():
        if not summary:
            dropped["empty summary"] += 1
        elif not desc:
            dropped["empty description"] += 1
        else:
            full[name] = (summary, desc)
    summaries = Counter(_norm(s) for s, _ in full.values())
    descs = Counter(_norm(d) for _, d in full.values())
    kept = {}
    for name, (summary, desc) in full.items():
        if summaries[_norm(summary)] > 1:
            dropped["duplicate summary"] += 1
        elif descs[_norm(desc)] > 1:
            dropped["duplicate description"] += 1
        else:
            kept[name] = (summary, desc)
    return kept, dropped


def _quotas(max_queries: int) -> dict[str, int]:
    dev, test = round(max_queries * 0.1), round(max_queries * 0.1)
    return {"train": max_queries - dev - test, "dev": dev, "test": test}


def _split_caps(max_queries: int | None, split_queries: Mapping[str, int] | None) -> dict[str, int | None]:
    """Queries per split: ``split_queries`` where it names the split, else the split's share of
    ``max_queries`` (None: no cap)."""
    named = dict(split_queries or {})
    unknown = sorted(set(named) - {s for s, _ in SPLITS})
    if unknown:
        raise ValueError(f"split_queries: unknown split(s) {unknown}; expected train, dev, test")
    for split, value in named.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"split_queries.{split} must be a positive integer, got {value!r}")
    share = _quotas(max_queries) if max_queries is not None else {}
    return {s: named.get(s, share.get(s)) for s, _ in SPLITS}


def build_debian(out_dir: str | Path, max_docs: int | None = None, max_queries: int | None = None,
                 split_queries: Mapping[str, int] | None = None, seed: int = 0,
                 lists_dir: str | Path = DEFAULT_LISTS_DIR,
                 sources: Sequence[str | Path] | None = None, progress: bool = False) -> DebianStats:
    """Build the Debian descriptions dataset as a BEIR folder.

    Args:
        out_dir: folder to write: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/{train,dev,test}.tsv``,
            ``train.jsonl`` (FlagEmbedding), ``train_pairs.jsonl`` (``query_id``/``pos_id``),
            ``labels.jsonl`` (``_id``, ``label`` = the package's Section, ``split``; when
            ``lists_dir`` has ``*_Packages`` lists and ``sources`` is not given) and
            ``dataset.json`` (counts, sources, rules).
        max_docs: corpus size cap. The corpus always holds every selected query's document, then
            other packages' descriptions as distractors up to ``max_docs``. None: all packages.
        max_queries: total queries over all splits, shared 80/10/10. None: every usable package.
        split_queries: queries of the splits it names, e.g. ``{"test": 300}``, instead of their
            share of ``max_queries`` (a larger test split measures a report more precisely; which
            split a package belongs to never changes).
        seed: picks which queries and distractors a cap keeps; the split of a package never
            depends on it.
        lists_dir: apt's lists folder, searched for ``*Translation-en*`` files. If it has none,
            ``apt-get update -o Acquire::Languages=en`` runs when we are root; otherwise the
            error says which command to run.
        sources: explicit Translation files to read instead (the first entry of a package in
            this order wins).
        progress: show tqdm progress bars while reading.

    Returns:
        :class:`DebianStats` with every count.

    Raises:
        ValueError: a cap is not positive, or ``max_docs`` is below the number of selected queries.
        FileNotFoundError: no Translation-en files and they cannot be fetched here.
    """
    for name, value in (("max_docs", max_docs), ("max_queries", max_queries)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    caps = _split_caps(max_queries, split_queries)
    start = time.perf_counter()
    files = ([Path(s) for s in sources] if sources is not None
             else _ensure_translation_files(Path(lists_dir)))
    packages, counts = read_descriptions(files, progress)
    kept, dropped = drop_ambiguous(packages)
    if counts["malformed"]:
        dropped["entry without Package/Description-en"] = counts["malformed"]

    rank = {name: hashlib.sha1(f"{seed}:{name}".encode()).hexdigest() for name in kept}
    by_split: dict[str, list[str]] = {s: [] for s, _ in SPLITS}
    for name in sorted(kept, key=rank.__getitem__):
        by_split[split_of(name)].append(name)
    by_split = {s: names if caps[s] is None else names[:caps[s]] for s, names in by_split.items()}
    positives = {name for names in by_split.values() for name in names}
    doc_names = set(kept)
    if max_docs is not None:
        if max_docs < len(positives):
            raise ValueError(f"max_docs={max_docs} is below the {len(positives)} documents the "
                             f"selected queries need; raise --max-docs or lower --max-queries")
        others = sorted((n for n in kept if n not in positives), key=rank.__getitem__)
        doc_names = positives | set(others[:max_docs - len(positives)])

    out = Path(out_dir)
    corpus = [Document(name, kept[name][1], "") for name in sorted(doc_names)]
    queries = sorted((f"q:{name}", kept[name][0]) for name in positives)
    qrels = {s: {f"q:{n}": {n: 1} for n in sorted(names)} for s, names in by_split.items()}
    write_beir(out, corpus, queries, qrels)
    train = sorted(by_split["train"])
    write_flag_jsonl((FlagExample(kept[n][0], [kept[n][1]], []) for n in train), out / "train.jsonl")
    write_jsonl_atomic(({"query_id": f"q:{n}", "pos_id": n} for n in train), out / "train_pairs.jsonl")
    sections = read_sections(find_packages_files(lists_dir)) if sources is None else {}
    labelled = [(d.id, sections[d.id]) for d in corpus if d.id in sections]
    if labelled:
        write_jsonl_atomic(({"_id": name, "label": section, "split": split_of(name)} for name, section in labelled),
                           out / "labels.jsonl")

    stats = DebianStats(out, [str(f) for f in files], counts["entries"], counts["repeated"],
                        len(packages), dict(dropped), len(kept),
                        {s: len(names) for s, names in by_split.items()}, len(corpus), len(labelled),
                        len({s for _, s in labelled}))
    meta = {"name": "debian-package-descriptions", "query": "package summary (Description-en first line)",
            "document": "long description, Debian formatting undone; title empty",
            "seed": seed, "max_docs": max_docs, "max_queries": max_queries,
            "split_queries": dict(split_queries) if split_queries else None,
            "split_rule": SPLIT_RULE, "selection_rule": SELECT_RULE,
            **{k: v for k, v in asdict(stats).items() if k not in ("out_dir", "seconds")}}
    write_json_atomic(meta, out / "dataset.json")
    stats.seconds = time.perf_counter() - start
    log.debug("debian dataset: %s", stats.summary().replace("\n", "; "))
    return stats


# --- CLI -------------------------------------------------------------------------------------
