"""Layer-reduced students: a teacher's encoder with only some of its transformer layers.

A student initialised from a subset of the teacher's layers (DistilBERT, TinyBERT-style)
starts far closer to the teacher than a random model of the same size, so distillation
converges quickly. Neither transformers nor sentence-transformers offers "drop layers and keep
the rest", hence this small module.

Example:
    >>> path = layer_reduced_student("minilm-l6", 3)       # layers [0, 2, 5] of 6
    >>> SentenceTransformer(str(path))                      # loads as is
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from safetensors import safe_open
from torch import nn

from embedray.models.bundled import cache_dir, resolve_model


def pick_layers(keep_layers: list[int] | int, num_layers: int) -> list[int]:
    """Resolve ``keep_layers`` to sorted, unique layer indices of a ``num_layers`` encoder.

    Args:
        keep_layers: Explicit indices (negative counts from the end), or a count ``k``: ``k``
            evenly spaced layers including the first and the last,
            ``round(i * (n - 1) / (k - 1))`` for ``i < k`` (6 -> 3 keeps ``[0, 2, 5]``;
            ``k = 1`` keeps ``[0]``, whose input, the embeddings, is unchanged).
        num_layers: Layers in the teacher.

    Raises:
        ValueError: an empty selection, an out-of-range index, or a count not in 1..num_layers.
    """
    if isinstance(keep_layers, bool):
        raise ValueError(f"keep_layers: expected an int or a list of ints, got {keep_layers!r}")
    if isinstance(keep_layers, int):
        k = keep_layers
        if not 1 <= k <= num_layers:
            raise ValueError(f"keep_layers: {k} is not between 1 and the teacher's {num_layers} layers")
        return [0] if k == 1 else sorted({round(i * (num_layers - 1) / (k - 1)) for i in range(k)})
    chosen = list(keep_layers)
    if not chosen or not all(isinstance(i, int) and not isinstance(i, bool) for i in chosen):
        raise ValueError(f"keep_layers: expected a non-empty list of ints, got {keep_layers!r}")
    bad = [i for i in chosen if not -num_layers <= i < num_layers]
    if bad:
        raise ValueError(f"keep_layers: {bad} out of range for a {num_layers}-layer teacher")
    return sorted({i % num_layers for i in chosen})


def keeps_every_layer(teacher_path_or_name: str | Path, keep_layers: list[int] | int) -> bool:
    """Whether ``keep_layers`` selects all of the teacher's layers (the student is then a copy)."""
    root = resolve_model(teacher_path_or_name)
    config = next((p for p in (root / "config.json", root / "0_Transformer" / "config.json") if p.exists()), None)
    if config is None:
        return False
    n = json.loads(config.read_text()).get("num_hidden_layers")
    return isinstance(n, int) and pick_layers(keep_layers, n) == list(range(n))


def encoder_layers(backbone: nn.Module) -> nn.ModuleList:
    """The transformer layer list of a BERT/MPNet/RoBERTa-style encoder (``encoder.layer``)."""
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(backbone).__name__}: no encoder.layer ModuleList; layer-reduced "
                         "students support BERT/MPNet/RoBERTa-style encoders")
    return layers


def drop_layers(backbone: nn.Module, keep: list[int]) -> None:
    """Keep only layers ``keep`` of ``backbone`` (in place) and update its config."""
    layers = encoder_layers(backbone)
    backbone.encoder.layer = nn.ModuleList(layers[i] for i in keep)
    backbone.config.num_hidden_layers = len(keep)
    for new_idx, layer in enumerate(backbone.encoder.layer):
        for module in layer.modules():  # cache bookkeeping in newer transformers
            if getattr(module, "layer_idx", None) is not None:
                module.layer_idx = new_idx


def layer_reduced_student(teacher_path_or_name: str | Path, keep_layers: list[int] | int,
                          out_dir: str | Path | None = None, max_seq_length: int | None = None) -> Path:
    """Save a copy of the teacher that keeps only the chosen transformer layers.

    Every other module (embeddings, pooling, Dense, Normalize, tokenizer, prompts) is copied
    unchanged, and the kept layers keep the teacher's weights.

    Args:
        teacher_path_or_name: A bundled model name or a sentence-transformers folder.
        keep_layers: Layer indices, or a count of evenly spaced layers (see :func:`pick_layers`).
        out_dir: Target folder; ``None`` uses the embedray cache, keyed by teacher and layers.
        max_seq_length: Token cap of the copy (sentence-transformers ``max_seq_length``); ``None``
            keeps the teacher's.

    Returns:
        The sentence-transformers folder of the student (written atomically; an existing
        folder at ``out_dir`` is replaced).
    """
    from sentence_transformers import SentenceTransformer

    from embedray.atomic import replace_dir

    teacher_dir = resolve_model(teacher_path_or_name)
    st = SentenceTransformer(str(teacher_dir), device="cpu", local_files_only=True)
    backbone = st[0].auto_model
    num_layers = len(encoder_layers(backbone))
    keep = pick_layers(keep_layers, num_layers)
    drop_layers(backbone, keep)
    if max_seq_length is not None:
        if not isinstance(max_seq_length, int) or max_seq_length < 1:
            raise ValueError(f"max_seq_length must be a positive integer, got {max_seq_length!r}")
        st.max_seq_length = max_seq_length
    out = Path(out_dir).expanduser().resolve() if out_dir else _default_out(teacher_dir, keep, st.max_seq_length)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        st.save(str(tmp / "model"), create_model_card=False, safe_serialization=True)
        _write_student_meta(tmp / "model", str(teacher_path_or_name), keep, num_layers)
        replace_dir(tmp / "model", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _default_out(teacher_dir: Path, keep: list[int], max_seq_length: int) -> Path:
    key = hashlib.sha1(f"{teacher_dir}|{keep}|{max_seq_length}".encode()).hexdigest()[:8]
    return cache_dir() / "models" / f"student-{teacher_dir.name}-L{'-'.join(map(str, keep))}-{key}"


def _write_student_meta(folder: Path, teacher: str, keep: list[int], num_layers: int) -> None:
    training = {"init": "layer_reduced_student", "teacher": teacher,
                "kept_layers": keep, "teacher_layers": num_layers}
    meta = {"base_model": teacher, "metrics": {}, "training": training}
    (folder / "embedray.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    (folder / "README.md").write_text(
        f"---\nlibrary_name: sentence-transformers\ntags:\n- sentence-transformers\n- embedray\n---\n\n"
        f"# Layer-reduced student of `{teacher}`\n\n"
        f"Layers {keep} of the teacher's {num_layers}, initialised from the teacher's weights; "
        "embeddings, pooling and normalisation copied unchanged. Not trained yet: distil it with "
        "embedray before use.\n")


def model_size(path: str | Path) -> dict[str, int]:
    """Parameter count and weight bytes of a model folder (bundled name or path).

    Read from the safetensors headers of every weight file in the folder (backbone, Dense,
    ...) without loading tensors. ``bytes`` is the size of those files on disk.
    """
    folder = resolve_model(path)
    files = sorted(folder.rglob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder}: no *.safetensors weights found")
    params = 0
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                params += _numel(f.get_slice(name).get_shape())
    return {"params": params, "bytes": sum(f.stat().st_size for f in files)}


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
