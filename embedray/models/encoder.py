"""The trainable bi-encoder: a Hugging Face backbone, pooling, optional projection, L2 norm.

``BiEncoder`` is a plain ``nn.Module`` that the training loop can wrap as it likes and
that exports itself as a sentence-transformers folder. It is hand-written rather than a
``SentenceTransformer`` because the loop needs a tensor-in/tensor-out ``forward`` over
pre-tokenised batches, LoRA/QLoRA on the backbone only, and an in-memory ``encode`` of the live
(possibly adapter-wrapped) weights; the export goes through sentence-transformers' own modules
so the saved folder loads with ``SentenceTransformer(path)`` and gives the same embeddings.

Example:
    >>> model = BiEncoder.from_config(ModelConfig("tiny-bert"))
    >>> batch = model.tokenize(["a query", "a document"])
    >>> model(**batch).shape                    # (2, 32)
    >>> model.save_sentence_transformer("out/model", matryoshka_dims=[32, 16])
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from embedray.atomic import replace_dir
from embedray.models.bundled import resolve_model
from embedray.models.config import ModelConfig
from embedray.models.precision import autocast
from embedray.models.prompts import export_prompts

#: Our pooling names -> sentence-transformers ``Pooling`` modes.
ST_POOLING = {"mean": "mean", "cls": "cls", "last": "lasttoken"}
#: Default LoRA targets per ``config.model_type`` (suffixes of linear-layer names).
LORA_TARGETS = {
    "bert": ["query", "key", "value", "dense"],
    "mpnet": ["q", "k", "v", "o", "dense"],
    "xlm-roberta": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    **{t: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
       for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2")},
}
QLORA_NEEDS_GPU = ("QLoRA needs a CUDA GPU and bitsandbytes (pip install 'embedray[gpu]'); "
                   "on CPU use finetune: lora or full")


def resolve_attention(attention: str, device: torch.device | str) -> str | None:
    """``train.attention`` for a device: ``auto`` → ``eager`` on a CPU (where back-propagating
    through torch's fused SDPA is the slower of the two), ``None`` (the backbone's own) elsewhere."""
    if attention not in ("auto", "eager", "sdpa"):
        raise ValueError(f"attention: must be auto, eager or sdpa, got {attention!r}")
    if attention != "auto":
        return attention
    return "eager" if torch.device(device).type == "cpu" else None


class BiEncoder(nn.Module):
    """Shared-weight text encoder: ``texts -> (batch, dim)`` embeddings.

    Build it with :meth:`from_config`. ``forward`` takes tokenised tensors (from :meth:`tokenize`)
    and returns pooled, projected, optionally normalised embeddings with gradients; ``encode``
    is the inference path (eval mode, no grad, numpy out).

    Attributes:
        backbone: The Hugging Face model (a peft ``PeftModel`` under LoRA/QLoRA).
        tokenizer: The backbone's fast tokenizer.
        projection: ``nn.Linear`` after pooling, or ``None``.
        config: The :class:`ModelConfig` it was built from (pooling resolved, never ``"auto"``).
        source_dir: The local folder the weights came from (used again by the export).
        precision: ``fp32``, ``bf16`` or ``auto`` (see :mod:`embedray.models.precision`): the
            backbone's compute precision in ``forward`` and ``encode``; pooling, projection and
            normalisation stay fp32. Set by the training loop from ``train.precision``.
        train_attention: the backbone's attention implementation (``eager``, ``sdpa``) in
            ``forward`` passes in training mode (GradCache's pass without a graph included, so
            that it matches the pass with one), ``None`` for its own; eval-mode passes (``encode``,
            dev evaluation, a frozen teacher) run its own. Set by the training loop from
            ``train.attention``.
    """

    def __init__(self, backbone: nn.Module, tokenizer: Any, config: ModelConfig, source_dir: Path,
                 max_seq_length: int, projection: nn.Linear | None = None) -> None:
        super().__init__()
        if config.pooling not in ST_POOLING:
            raise ValueError(f"pooling must be resolved to one of {list(ST_POOLING)}, "
                             f"got {config.pooling!r}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.projection = projection
        self.config = config
        self.source_dir = Path(source_dir)
        self.max_seq_length = max_seq_length
        self.precision = "fp32"
        self.train_attention: str | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def from_config(cls, cfg: ModelConfig) -> BiEncoder:
        """Load the backbone, tokenizer and pooling/projection named by ``cfg``.

        Args:
            cfg: The model config; ``cfg.name_or_path`` is resolved with :func:`resolve_model`
                (bundled names or local folders only, never a hub).

        Returns:
            A ``BiEncoder`` in training mode. Under ``lora``/``qlora`` only the adapters and the
            projection are trainable.

        Raises:
            RuntimeError: ``finetune: qlora`` without CUDA.
            ValueError: a folder whose Dense module does not match ``projection_dim``.
        """
        if cfg.finetune == "qlora" and not torch.cuda.is_available():
            raise RuntimeError(QLORA_NEEDS_GPU)
        folder = resolve_model(cfg.name_or_path)
        layout = read_st_layout(folder)
        pooling = layout["pooling"] if cfg.pooling == "auto" else cfg.pooling
        cfg = dataclasses.replace(cfg, pooling=pooling)
        backbone = load_backbone(layout["backbone_dir"], cfg.dtype,
                                 quant_bits=cfg.qlora_bits if cfg.finetune == "qlora" else None)
        tokenizer = load_tokenizer(layout["backbone_dir"])
        max_len = cfg.max_seq_length or default_max_length(layout, tokenizer, backbone.config)
        tokenizer.model_max_length = max_len
        projection = build_projection(layout, backbone.config.hidden_size, cfg.projection_dim)
        if projection is not None and cfg.finetune == "qlora":
            projection.to(backbone.device)  # bitsandbytes already placed the backbone on the GPU
        if cfg.finetune in ("lora", "qlora"):
            backbone = add_lora(backbone, cfg)
        else:
            _freeze_pooler(backbone)
        return cls(backbone, tokenizer, cfg, folder, max_len, projection)

    @property
    def embedding_dim(self) -> int:
        """Size of the output embeddings."""
        if self.projection is not None:
            return self.projection.out_features
        return self.backbone.config.hidden_size

    @property
    def device(self) -> torch.device:
        """Device of the first parameter (where ``encode`` puts its batches)."""
        return next(self.parameters()).device

    # ------------------------------------------------------------------ math
    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Tokenise ``texts`` padded to the longest one and truncated to ``max_length``.

        Args:
            texts: Raw strings (prefixes already applied, see :meth:`encode`).
            max_length: Token cap; ``None`` uses the model's ``max_seq_length``.

        Returns:
            ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the backbone uses them),
            each ``(batch, seq)`` on the CPU.
        """
        return dict(self.tokenizer(list(texts), padding="longest", truncation=True,
                                   max_length=max_length or self.max_seq_length, return_tensors="pt"))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, return_hidden: bool = False,
                **features: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Embed a tokenised batch.

        Args:
            input_ids: ``(batch, seq)`` token ids.
            attention_mask: ``(batch, seq)``, 1 for real tokens, 0 for padding.
            return_hidden: also return the token states after each transformer layer.
            **features: Other tokenizer outputs passed to the backbone (e.g. ``token_type_ids``).

        Returns:
            ``(batch, dim)`` float32 embeddings (unit length when ``config.normalize``); with
            ``return_hidden``, ``(embeddings, states)``: one ``(batch, seq, hidden)`` per layer.
        """
        with autocast(self.precision, input_ids.device), self._attention(self.training):
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                                output_hidden_states=return_hidden, **features)
        tokens = out.last_hidden_state.float()  # (batch, seq, hidden); pool in float32 under bf16
        emb = pool(tokens, attention_mask, self.config.pooling)  # (batch, hidden)
        if self.projection is not None:
            emb = self.projection(emb.to(self.projection.weight.dtype)).float()  # (batch, dim)
        if self.config.normalize:
            emb = F.normalize(emb, p=2, dim=-1)
        return (emb, tuple(h.float() for h in out.hidden_states[1:])) if return_hidden else emb

    @contextlib.contextmanager
    def _attention(self, training: bool):
        """The backbone runs ``train_attention`` for a training-mode pass, then its own again (the
        autograd graph keeps the kernels it recorded; the saved config never sees the switch)."""
        base = self.backbone.get_base_model() if hasattr(self.backbone, "get_base_model") else self.backbone
        own = getattr(base.config, "_attn_implementation", None)
        switch = training and self.train_attention not in (None, own) and hasattr(base, "set_attn_implementation")
        if switch:
            base.set_attn_implementation(self.train_attention)
        try:
            yield
        finally:
            if switch:
                base.set_attn_implementation(own)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress_bar: bool = False,
               prompt: str = "") -> np.ndarray:
        """Embed ``texts`` for inference, in input order.

        Texts are sorted by length and batched so that each batch pads little (as
        sentence-transformers does), then put back in the caller's order. The module's
        train/eval mode is restored afterwards, so the training loop can call this mid-run.

        Args:
            texts: Strings to embed.
            batch_size: Texts per forward pass.
            show_progress_bar: Show a tqdm bar over batches.
            prompt: Text prepended to every input (see :meth:`encode_queries`).

        Returns:
            ``(len(texts), dim)`` float32 array.
        """
        texts = [prompt + t for t in texts]
        order = np.argsort([-len(t) for t in texts], kind="stable")
        was_training = self.training
        self.eval()
        chunks = []
        try:
            for start in tqdm(range(0, len(texts), batch_size), disable=not show_progress_bar,
                              desc="encode"):
                batch = self.tokenize([texts[i] for i in order[start:start + batch_size]])
                chunks.append(self(**{k: v.to(self.device) for k, v in batch.items()}).cpu())
        finally:
            self.train(was_training)
        if not chunks:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        emb = torch.cat(chunks).numpy()  # (n, dim), sorted order
        out = np.empty_like(emb)
        out[order] = emb
        return out

    def encode_queries(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        """:meth:`encode` with ``config.query_prompt`` prepended."""
        return self.encode(texts, prompt=self.config.query_prompt, **kwargs)

    def encode_documents(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        """:meth:`encode` with ``config.doc_prompt`` prepended."""
        return self.encode(texts, prompt=self.config.doc_prompt, **kwargs)

    # ------------------------------------------------------------------ export
    def merged_backbone(self) -> nn.Module:
        """A standalone float32 CPU copy of the backbone with any LoRA adapter merged in.

        The copy is rebuilt from ``source_dir`` and receives the live weights (full fine-tuning)
        or the live adapter (LoRA/QLoRA, merged into the full-precision base weights), so the
        training model is untouched and training can go on after an export.
        """
        fresh = load_backbone(read_st_layout(self.source_dir)["backbone_dir"], "float32", None,
                              device="cpu")
        if self.config.finetune == "full":
            fresh.load_state_dict({k: _cpu_float32(v) for k, v in self.backbone.state_dict().items()})
            return fresh
        from peft import (
            get_peft_model,
            get_peft_model_state_dict,
            set_peft_model_state_dict,
        )

        wrapped = get_peft_model(fresh, copy.deepcopy(self.backbone.peft_config["default"]))
        adapter = {k: _cpu_float32(v) for k, v in get_peft_model_state_dict(self.backbone).items()}
        set_peft_model_state_dict(wrapped, adapter)
        return wrapped.merge_and_unload()

    def to_sentence_transformer(self, extra_card: dict | None = None, workdir: Path | None = None,
                                prompts: dict[str, str] | None = None):
        """Build a CPU float32 ``SentenceTransformer`` equal to this model (merged adapter).

        Args:
            extra_card: Optional ``model_name`` and ``data`` (dataset names) for the model card.
            workdir: Folder for the intermediate Hugging Face save (a temp dir when ``None``).
            prompts: Named prompts beside ``query`` / ``document`` (a multi-task recipe's).

        Returns:
            A ``SentenceTransformer`` (Transformer -> Pooling -> [Dense] -> [Normalize]) with the
            config's query/document prompts (and ``prompts``) as its prompts, ``document`` the
            default when it is not empty (:func:`embedray.models.prompts.export_prompts`).
        """
        from sentence_transformers import (
            SentenceTransformer,
            SentenceTransformerModelCardData,
        )

        st_models = _st_modules()
        extra_card = extra_card or {}
        owned = workdir is None
        workdir = Path(tempfile.mkdtemp(prefix="embedray-st-")) if owned else workdir
        try:
            hf_dir = workdir / "hf"
            self.merged_backbone().save_pretrained(hf_dir, safe_serialization=True)
            self.tokenizer.save_pretrained(hf_dir)
            modules = [st_models.Transformer(str(hf_dir), max_seq_length=self.max_seq_length),
                       st_models.Pooling(self.backbone.config.hidden_size,
                                         pooling_mode=ST_POOLING[self.config.pooling])]
            if self.projection is not None:
                modules.append(self._st_dense())
            if self.config.normalize:
                modules.append(st_models.Normalize())
            card = SentenceTransformerModelCardData(local_files_only=True,
                                                    model_name=extra_card.get("model_name")
                                                    or f"embedray fine-tune of {self.config.name_or_path}")
            card.add_tags(["embedray"])
            # The card template renders these under "Training Hyperparameters". Its dataset
            # entries need trainer-collected stats (columns, loss), so data goes in card_section.
            card.all_hyperparameters = _flatten(extra_card.get("training", {}))
            named, default = export_prompts(self.config.query_prompt, self.config.doc_prompt, prompts)
            return SentenceTransformer(
                modules=modules, device="cpu", model_card_data=card, prompts=named,
                default_prompt_name=default, similarity_fn_name="cosine" if self.config.normalize else "dot")
        finally:
            if owned:
                shutil.rmtree(workdir, ignore_errors=True)

    def _st_dense(self) -> nn.Module:
        proj = self.projection
        bias = None if proj.bias is None else _cpu_float32(proj.bias).clone()
        return _st_modules().Dense(proj.in_features, proj.out_features, bias=proj.bias is not None,
                                   activation_function=nn.Identity(),
                                   init_weight=_cpu_float32(proj.weight).clone(), init_bias=bias)

    def save_sentence_transformer(self, path: str | Path, extra_card: dict | None = None,
                                  matryoshka_dims: Sequence[int] | None = None,
                                  prompts: dict[str, str] | None = None) -> Path:
        """Export a sentence-transformers folder (safetensors) plus ``embedray.json``, atomically.

        Modules: Transformer (merged backbone + tokenizer) -> Pooling -> Dense (identity
        activation, if projected) -> Normalize (if normalised). The folder is built beside
        ``path`` and renamed into place; an existing ``path`` is replaced only once the new
        folder is complete.

        Args:
            path: Target folder.
            extra_card: Optional ``{"model_name": str, "data": str | list[str],
                "metrics": dict, "training": dict}`` for the model card and ``embedray.json``.
            matryoshka_dims: Truncation sizes the model was trained for; validated against the
                embedding size, sorted descending, the full size always included.
            prompts: Named prompts beside the config's ``query`` / ``document`` ones (a
                multi-task recipe's ``<task>-query`` ...), saved as sentence-transformers prompts.

        Returns:
            The resolved target folder.
        """
        path = Path(path).expanduser().resolve()
        dims = check_matryoshka_dims(matryoshka_dims, self.embedding_dim)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
        try:
            st_model = self.to_sentence_transformer(extra_card, workdir=tmp, prompts=prompts)
            out = tmp / "model"
            st_model.save(str(out), safe_serialization=True)
            meta = self._embedray_meta(extra_card or {}, dims)
            (out / "embedray.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
            with open(out / "README.md", "a", encoding="utf8") as f:
                f.write(card_section(meta, self.config))
            replace_dir(out, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return path

    def _embedray_meta(self, extra_card: dict, dims: list[int] | None) -> dict:
        meta = {"base_model": self.config.name_or_path, "embedding_dim": self.embedding_dim,
                "pooling": self.config.pooling, "metrics": extra_card.get("metrics", {}),
                "training": extra_card.get("training", {})}
        if dims is not None:
            meta["matryoshka_dims"] = dims
        if extra_card.get("data") is not None:
            meta["data"] = _as_list(extra_card["data"])
        return meta


# ---------------------------------------------------------------------- pooling
def pool(tokens: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool ``(batch, seq, hidden)`` token vectors into ``(batch, hidden)``.

    ``mean`` averages real tokens; ``cls`` takes the first real token; ``last`` takes the last
    real token, wherever the padding is (left or right), as sentence-transformers does.
    """
    mask = attention_mask.to(tokens.dtype).unsqueeze(-1)  # (batch, seq, 1)
    if mode == "mean":
        return (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    positions = torch.arange(tokens.size(1), device=tokens.device)  # (seq,)
    real = attention_mask.bool()
    if mode == "cls":
        index = torch.where(real, positions, tokens.size(1)).min(dim=1).values  # (batch,)
    elif mode == "last":
        index = torch.where(real, positions, -1).max(dim=1).values.clamp(min=0)  # (batch,)
    else:
        raise ValueError(f"unknown pooling {mode!r}; use mean, cls or last")
    index = index.clamp(max=tokens.size(1) - 1)
    return tokens[torch.arange(tokens.size(0), device=tokens.device), index]  # (batch, hidden)


# ---------------------------------------------------------------------- loading
def read_st_layout(folder: str | Path) -> dict[str, Any]:
    """Describe a model folder: where the backbone is, its pooling, Dense and max length.

    Works for sentence-transformers folders (``modules.json``) and plain Hugging Face folders
    (then pooling is ``mean``, no Dense). Returns ``{"backbone_dir": Path, "pooling": str,
    "dense_dir": Path | None, "max_seq_length": int | None}``.
    """
    folder = Path(folder)
    layout = {"backbone_dir": folder, "pooling": "mean", "dense_dir": None, "max_seq_length": None}
    if not (folder / "modules.json").exists():
        return layout
    for module in json.loads((folder / "modules.json").read_text()):
        kind, sub = module["type"].rsplit(".", 1)[-1], folder / module.get("path", "")
        if kind == "Transformer":
            layout["backbone_dir"] = sub
            layout["max_seq_length"] = _json_get(sub / "sentence_bert_config.json", "max_seq_length")
        elif kind == "Pooling":
            layout["pooling"] = _pooling_from_config(json.loads((sub / "config.json").read_text()))
        elif kind == "Dense":
            if layout["dense_dir"] is not None:
                raise ValueError(f"{folder}: more than one Dense module; not supported")
            layout["dense_dir"] = sub
        elif kind not in ("Normalize",):
            raise ValueError(f"{folder}/modules.json: module type {module['type']!r} is not supported "
                             "(supported: Transformer, Pooling, Dense, Normalize)")
    return layout


def _pooling_from_config(cfg: dict) -> str:
    """Map a sentence-transformers Pooling config (new or legacy keys) to mean/cls/last."""
    mode = cfg.get("pooling_mode")
    if mode is None:  # legacy boolean keys, e.g. all-MiniLM-L6-v2's
        legacy = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                  "pooling_mode_lasttoken": "last"}
        active = [ours for key, ours in legacy.items() if cfg.get(key)]
        others = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v and k not in legacy]
        if len(active) != 1 or others:
            raise ValueError(f"pooling config {cfg} is not a single mean/cls/lasttoken mode")
        return active[0]
    ours = {v: k for k, v in ST_POOLING.items()}
    if mode not in ours:
        raise ValueError(f"pooling mode {mode!r} is not supported (mean, cls, lasttoken)")
    return ours[mode]


def load_backbone(folder: Path, dtype: str, quant_bits: int | None, device: str | None = None) -> nn.Module:
    """Load a Hugging Face backbone from a local folder: safetensors, no remote code.

    Args:
        folder: Folder with ``config.json`` and ``*.safetensors``.
        dtype: ``"float32"`` or ``"bfloat16"``.
        quant_bits: 4 or 8 to quantise with bitsandbytes (CUDA only), ``None`` for none.
        device: Where to put the weights (``None`` leaves them on the CPU unless quantised).
    """
    from transformers import AutoModel

    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype), "local_files_only": True,
                              "trust_remote_code": False, "use_safetensors": True}
    if quant_bits is not None:
        kwargs.update(quantization_config=_bnb_config(quant_bits, dtype),
                      device_map={"": torch.cuda.current_device()})
    model = AutoModel.from_pretrained(str(folder), **kwargs)
    return model.to(device) if device is not None else model


def _bnb_config(bits: int, dtype: str):
    try:
        import bitsandbytes  # noqa: F401  (lazy: only QLoRA needs it)
    except ImportError:
        raise RuntimeError(QLORA_NEEDS_GPU) from None
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)


def load_tokenizer(folder: Path):
    """The folder's fast tokenizer; decoders without a pad token pad with EOS."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    if not tok.is_fast:
        raise ValueError(f"{folder}: no fast tokenizer (tokenizer.json) found")
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"{folder}: tokenizer has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
    return tok


def default_max_length(layout: dict, tokenizer: Any, backbone_config: Any) -> int:
    """The folder's max length, else the tokenizer's, capped at the position embeddings."""
    if layout["max_seq_length"]:
        return int(layout["max_seq_length"])
    limit = getattr(backbone_config, "max_position_embeddings", None) or 512
    return int(min(tokenizer.model_max_length, limit))


def build_projection(layout: dict, hidden: int, projection_dim: int | None) -> nn.Linear | None:
    """A fresh ``Linear(hidden, projection_dim)``, or the folder's own Dense layer.

    A Dense already in the folder (an exported embedray model) is loaded when ``projection_dim``
    is ``None`` or equal to its output size; any other size is an error.
    """
    if layout["dense_dir"] is None:
        return nn.Linear(hidden, projection_dim) if projection_dim else None
    dense_dir = layout["dense_dir"]
    cfg = json.loads((dense_dir / "config.json").read_text())
    if cfg.get("activation_function", "").rsplit(".", 1)[-1] != "Identity":
        raise ValueError(f"{dense_dir}: Dense activation {cfg.get('activation_function')!r} is not "
                         "supported (only Identity)")
    if projection_dim not in (None, cfg["out_features"]):
        raise ValueError(f"{dense_dir}: the folder projects to {cfg['out_features']} dims but "
                         f"projection_dim is {projection_dim}; use null or {cfg['out_features']}")
    weights = dense_dir / "model.safetensors"
    if not weights.exists():
        raise ValueError(f"{dense_dir}: no model.safetensors (pickled weights are not loaded)")
    linear = nn.Linear(cfg["in_features"], cfg["out_features"], bias=cfg.get("bias", True))
    state = {k.removeprefix("linear."): v for k, v in load_file(weights).items()}
    linear.load_state_dict(state)
    return linear


def add_lora(backbone: nn.Module, cfg: ModelConfig) -> nn.Module:
    """Wrap ``backbone`` with LoRA adapters (peft); base weights frozen."""
    from peft import LoraConfig, get_peft_model

    if cfg.finetune == "qlora":
        from peft import prepare_model_for_kbit_training

        backbone = prepare_model_for_kbit_training(backbone, use_gradient_checkpointing=False)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=lora_targets(backbone, cfg.lora_target_modules),
                      task_type="FEATURE_EXTRACTION")
    return get_peft_model(backbone, lora)


def lora_targets(backbone: nn.Module, names: list[str] | None) -> list[str]:
    """Full names of the linear layers to adapt: ``names`` (or the arch default) minus the pooler.

    Full names rather than suffixes so the unused pooler never gets an adapter (a trainable
    parameter that never gets a gradient).
    """
    names = names or LORA_TARGETS.get(backbone.config.model_type)
    chosen = []
    for full, module in backbone.named_modules():
        if not _is_linear(module) or full.split(".")[0] == "pooler":
            continue
        if names is None or full.rsplit(".", 1)[-1] in names:
            chosen.append(full)
    if not chosen:
        raise ValueError(f"model.lora_target_modules {names} match no linear layer of this "
                         f"{backbone.config.model_type} backbone")
    return chosen


def _is_linear(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return type(module).__name__ in ("Linear4bit", "Linear8bitLt")  # bitsandbytes layers


def _freeze_pooler(backbone: nn.Module) -> None:
    """BERT-style poolers are computed but unused by embedding pooling: freeze them so every
    trainable parameter gets a gradient."""
    pooler = getattr(backbone, "pooler", None)
    if isinstance(pooler, nn.Module):
        pooler.requires_grad_(False)


# ---------------------------------------------------------------------- export helpers
def check_matryoshka_dims(dims: Sequence[int] | None, full: int) -> list[int] | None:
    """Validate Matryoshka dims: positive ints <= ``full``; returns them sorted descending with
    ``full`` included, or ``None`` when ``dims`` is ``None``."""
    if dims is None:
        return None
    bad = [d for d in dims if not isinstance(d, int) or isinstance(d, bool) or not 0 < d <= full]
    if bad:
        raise ValueError(f"matryoshka_dims {list(dims)}: {bad} not positive integers <= the "
                         f"embedding size {full}")
    return sorted(set(dims) | {full}, reverse=True)


def card_section(meta: dict, cfg: ModelConfig) -> str:
    """Markdown appended to the sentence-transformers model card: embedray training facts.

    sentence-transformers' card renders the training config (as hyperparameters) but has no
    slot for metrics computed outside its evaluators, plain dataset names or Matryoshka dims,
    so they get their own section.
    """
    lines = ["", "## embedray", "",
             f"- **Base model:** `{meta['base_model']}`",
             f"- **Pooling:** {meta['pooling']}; **normalized:** {cfg.normalize}; "
             f"**fine-tuning:** {cfg.finetune}",
             f"- **Embedding size:** {meta['embedding_dim']}",
             f"- **Matryoshka dims:** {', '.join(map(str, meta.get('matryoshka_dims', []))) or 'none'}"]
    if meta.get("data"):
        lines.append(f"- **Training data:** {', '.join(meta['data'])}")
    if meta["metrics"]:
        lines += ["", "### Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(_flatten(meta["metrics"]).items())]
    return "\n".join(lines) + "\n"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _cpu_float32(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu()
    return t.float() if t.is_floating_point() else t


def _st_modules():
    """sentence-transformers' module classes (moved in v5; the old path warns)."""
    try:
        from sentence_transformers.sentence_transformer import modules
    except ImportError:
        from sentence_transformers import models as modules
    return modules


def _as_list(x: Any) -> list:
    if x is None:
        return []
    return [x] if isinstance(x, (str, Path)) else list(x)


def _json_get(path: Path, key: str) -> Any:
    return json.loads(path.read_text()).get(key) if path.exists() else None


def unquantised(model_cfg: ModelConfig) -> ModelConfig:
    """The config to encode a model being trained with, outside its training (the negative
    refresher, the dev checks): itself, but for QLoRA, whose adapter goes on the full-precision
    base (LoRA): no GPU nor bitsandbytes needed, and it encodes as the exported (merged) model."""
    return dataclasses.replace(model_cfg, finetune="lora") if model_cfg.finetune == "qlora" else model_cfg


def load_snapshot(model: BiEncoder, weights: dict) -> None:
    """Load a training model's ``state_dict`` into ``model`` (built from :func:`unquantised`).
    From a QLoRA model the quantised base weights (other dtypes and shapes, plus bitsandbytes'
    quantisation state) are left out: ``model`` keeps its full-precision base and takes
    everything else, every adapter weight included."""
    if model.config.finetune == "full" or all(
            k in weights and weights[k].shape == v.shape and weights[k].dtype == v.dtype
            for k, v in model.state_dict().items()):
        model.load_state_dict(weights)
        return
    own = model.state_dict()
    taken = {k: v for k, v in weights.items() if k in own and v.shape == own[k].shape and v.is_floating_point()}
    missing = [k for k in own if k not in weights]  # a quantised weight is there, in another form
    if missing:
        raise ValueError(f"the weights snapshot lacks {len(missing)} trained weights "
                         f"(e.g. {missing[0]}); its model config differs from the trainer's")
    model.load_state_dict(taken, strict=False)
