"""Instructions a model was trained with, as sentence-transformers stores and applies them.

An exported model's ``config_sentence_transformers.json`` holds ``prompts`` (name → text put
before the input) and ``default_prompt_name``. embedray writes the ``query`` and ``document``
prompts of the model's config (the names ``SentenceTransformer.encode_query`` and
``encode_document`` look up), one ``<task>-query`` / ``<task>-document`` pair per task of a
multi-task recipe, and ``document`` as the default when it is not empty, so that
``SentenceTransformer(path).encode(texts)`` embeds documents as training did and
``encode_query`` / ``encode(..., prompt_name=...)`` reproduce the other roles.

Torch-free: the server reads a folder's prompts before it loads the model.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

QUERY, DOCUMENT = "query", "document"
#: The names ``SentenceTransformer.encode_document`` tries, in its order.
DOCUMENT_NAMES = ("document", "passage", "corpus")
#: ``input_type`` values of ``/v1/embeddings`` (as Voyage and Cohere clients send them) → role.
INPUT_TYPES = {"query": QUERY, "document": DOCUMENT, "search_query": QUERY, "search_document": DOCUMENT}


def export_prompts(query_prompt: str, doc_prompt: str,
                   extra: Mapping[str, str] | None = None) -> tuple[dict[str, str], str | None]:
    """``(prompts, default_prompt_name)`` for an exported model.

    Args:
        query_prompt: the ``query`` prompt (the model config's ``query_prompt``).
        doc_prompt: the ``document`` prompt.
        extra: more named prompts (a multi-task recipe's ``<task>-query`` ...); may not redefine
            ``query`` / ``document`` with another text.
    """
    prompts = {QUERY: query_prompt, DOCUMENT: doc_prompt}
    for name, text in (extra or {}).items():
        if prompts.get(name, text) != text:
            raise ValueError(f"prompt {name!r} is given twice with different texts "
                             f"({prompts[name]!r} and {text!r})")
        prompts[name] = text
    return prompts, (DOCUMENT if doc_prompt else None)


def role_prompt(prompts: Mapping[str, str], default_name: str | None, role: str) -> str:
    """The text sentence-transformers' ``encode_query`` (``role="query"``) or ``encode_document``
    (``role="document"``) puts before an input: the role's own prompt when the model has one,
    else the default prompt, else nothing."""
    names = (QUERY,) if role == QUERY else DOCUMENT_NAMES
    for name in names:
        if name in prompts:
            return prompts[name] or ""
    return (prompts.get(default_name) or "") if default_name else ""


def model_prompts(model: Any) -> tuple[dict[str, str], str | None]:
    """``(prompts, default_prompt_name)`` of a loaded ``SentenceTransformer`` (empty for other encoders)."""
    return dict(getattr(model, "prompts", None) or {}), getattr(model, "default_prompt_name", None)


def read_prompts(folder: str | Path) -> tuple[dict[str, str], str | None]:
    """``(prompts, default_prompt_name)`` from a folder's ``config_sentence_transformers.json``."""
    path = Path(folder) / "config_sentence_transformers.json"
    if not path.is_file():
        return {}, None
    cfg = json.loads(path.read_text(encoding="utf-8"))
    return dict(cfg.get("prompts") or {}), cfg.get("default_prompt_name")
