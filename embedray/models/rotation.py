"""Rotate a model's embedding space onto its principal axes, so Matryoshka prefixes keep the most.

Truncating an embedding to its first ``k`` dimensions keeps whatever those coordinates
happen to hold. A distilled student trained for a few hundred steps has not learnt to put the
most important directions first, however its Matryoshka loss was weighted. An orthogonal
rotation onto the principal axes of its own embeddings (fit on training texts) does: the
first ``k`` coordinates then span the ``k`` directions of largest variance, the best
``k``-dimensional linear subspace for those texts. A rotation preserves inner products and
norms, so full-dimension scores are unchanged.

The rotation is stored as a sentence-transformers ``Dense`` module (identity activation, no
bias) before ``Normalize``, so every loader (sentence-transformers, the serving app, further
training with embedray) applies it; a model that already ends in a linear ``Dense`` gets the
rotation folded into that one. FAISS's ``PCAMatrix`` does the same at index time for one
index; here it travels with the model. Written here because sentence-transformers has no
rotation export.
"""
from __future__ import annotations

import json
import random
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

ROTATION_KEY = "rotation"


def fit_texts(pairs: Iterable[tuple[str, str]], max_texts: int | None = None, seed: int = 0) -> list[str]:
    """The distinct query and document texts of ``(query, positive)`` pairs to fit a rotation on;
    a fixed random sample of at most ``max_texts`` of them."""
    texts = list(dict.fromkeys(t for pair in pairs for t in pair))
    if max_texts is not None and len(texts) > max_texts:
        texts = random.Random(seed).sample(texts, max_texts)
    return texts


def principal_rotation(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orthogonal ``(dim, dim)`` matrix whose columns are the principal axes, largest first.

    Args:
        embeddings: ``(n, dim)`` float embeddings of representative texts (``n >= 2``).

    Returns:
        ``(rotation, explained)``: ``embeddings @ rotation`` has its highest-variance
        coordinates first; ``explained`` is the cumulative share of variance of the first
        ``1..dim`` coordinates. Each axis's sign makes its largest-magnitude entry positive, so
        the result is deterministic.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need (n >= 2, dim) embeddings to fit a rotation, got shape {x.shape}")
    x = x - x.mean(axis=0, keepdims=True)
    eigvals, eigvecs = np.linalg.eigh(x.T @ x)  # ascending, (dim,), (dim, dim)
    order = np.argsort(eigvals)[::-1]
    eigvals, rot = np.clip(eigvals[order], 0.0, None), eigvecs[:, order]
    signs = np.sign(rot[np.abs(rot).argmax(axis=0), np.arange(rot.shape[1])])
    rot = rot * np.where(signs == 0, 1.0, signs)
    total = eigvals.sum()
    explained = np.cumsum(eigvals) / total if total > 0 else np.ones_like(eigvals)
    return rot.astype(np.float32), explained


def rotate_model(model_dir: str | Path, texts: Sequence[str], out_dir: str | Path,
                 batch_size: int = 64, show_progress: bool = False) -> dict:
    """Write a copy of the sentence-transformers folder ``model_dir`` rotated onto principal axes.

    Args:
        model_dir: A sentence-transformers folder (Transformer -> Pooling -> [Dense] -> [Normalize])
            or a bundled model name.
        texts: Texts to fit the axes on: training queries and documents, never test ones.
        out_dir: Target folder, built beside it and renamed into place (replaces an old one).
        batch_size: Encoder batch size.
        show_progress: A progress bar while encoding ``texts``.

    Returns:
        What was recorded under ``"rotation"`` in the copy's ``embedray.json``: the kind, the
        number of fit texts and the variance share the first 1/8, 1/4 and 1/2 of dims explain.
    """
    from embedray.atomic import replace_dir
    from embedray.models.backends import load_encoder
    from embedray.models.bundled import resolve_model

    src, out = Path(resolve_model(model_dir)).resolve(), Path(out_dir).expanduser().resolve()
    if len(texts) < 2:
        raise ValueError(f"need at least 2 texts to fit a rotation of {src}, got {len(texts)}")
    model = load_encoder(src)
    start = time.perf_counter()
    emb = model.encode(list(texts), batch_size=batch_size, show_progress_bar=show_progress,
                       convert_to_numpy=True)  # (n, dim)
    rot, explained = principal_rotation(emb)
    _apply_rotation(model, rot)
    dim = rot.shape[0]
    info = {"kind": "pca", "fit_texts": len(texts),
            "explained_variance": {str(k): round(float(explained[k - 1]), 4)
                                   for k in sorted({max(1, dim // 8), max(1, dim // 4), max(1, dim // 2)})},
            "seconds": round(time.perf_counter() - start, 2)}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.tmp-") as tmp:
        staged = Path(tmp) / "model"
        model.save(str(staged), safe_serialization=True)
        meta_path = src / "embedray.json"
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
        meta[ROTATION_KEY] = info
        (staged / "embedray.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        _update_card(staged / "README.md", repr(model), info)
        for extra in src.glob("*.json"):  # e.g. training_config.json, kept beside the weights
            if not (staged / extra.name).exists():
                shutil.copy2(extra, staged / extra.name)
        replace_dir(staged, out)
    return info


def variance_summary(info: dict) -> str:
    """``"48 dims 58%, 96 dims 78%, ..."``: the variance share of each recorded prefix."""
    return ", ".join(f"{k} dims {v:.0%}" for k, v in info["explained_variance"].items())


def _update_card(card: Path, architecture: str, info: dict) -> None:
    """The copied model card: the new module list, and the rotation in embedray's section."""
    if not card.exists():
        return
    text = card.read_text(encoding="utf-8")
    text = re.sub(r"(### Full Model Architecture\s*```\n).*?(\n```)",
                  lambda m: m.group(1) + architecture + m.group(2), text, count=1, flags=re.S)
    line = (f"- **Rotation:** onto the principal axes of {info['fit_texts']} training texts "
            f"(variance held by the first {variance_summary(info)}); full-dimension scores unchanged")
    text, found = re.subn(r"(- \*\*Matryoshka dims:\*\*[^\n]*\n)", lambda m: m.group(1) + line + "\n",
                          text, count=1)
    if not found:
        text += f"\n## embedray\n\n{line}\n"
    card.write_text(text, encoding="utf-8")


def _apply_rotation(model, rot: np.ndarray) -> None:
    """Insert ``Dense(x) = x @ rot`` before ``Normalize`` (or fold it into a linear Dense)."""
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    weight = torch.from_numpy(np.ascontiguousarray(rot.T))  # Dense computes x @ weight.T
    names = list(model._modules)
    dense = [n for n in names if isinstance(model._modules[n], Dense)]
    if dense:
        if len(dense) > 1:
            raise ValueError(f"{len(dense)} Dense modules; a rotation folds into one only")
        layer = model._modules[dense[0]]
        if not isinstance(layer.activation_function, torch.nn.Identity):
            raise ValueError(f"the model's Dense module has a {type(layer.activation_function).__name__} "
                             "activation; a rotation folds only into a linear (Identity) Dense")
        with torch.no_grad():
            linear = layer.linear
            linear.weight.copy_(weight.to(linear.weight) @ linear.weight)  # (dim, in)
            if linear.bias is not None:
                linear.bias.copy_(linear.bias @ weight.T.to(linear.bias))
        return
    dim = rot.shape[0]
    layer = Dense(dim, dim, bias=False, activation_function=torch.nn.Identity(), init_weight=weight)
    at = next((i for i, n in enumerate(names) if isinstance(model._modules[n], Normalize)), len(names))
    modules = [model._modules[n] for n in names]
    modules.insert(at, layer)
    model._modules.clear()
    for i, module in enumerate(modules):
        model._modules[str(i)] = module
