"""Teacher signals for distillation: a frozen teacher bi-encoder run beside the student, and the
cross-encoder scores that mined pools carry."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from embedray.losses.similarity import similarity_matrix

from embedray.models.bundled import resolve_model
from embedray.models.config import ModelConfig
from embedray.training.config import DistillConfig


class Teacher:
    """A frozen bi-encoder: embeddings, token states and candidate scores for a batch, no gradients.

    Its outputs never change, and training sees each query, positive and sampled negative
    several times (every epoch, every worker), so each text is encoded once and remembered, up
    to ``max_cached`` texts and ``max_state_bytes`` of token states (then the rest is encoded
    every time it comes up).

    Args:
        name_or_path: the teacher (bundled name or folder).
        student_cfg: the student's model config (its query / document prefixes are the teacher's).
        device: where the teacher runs.
        hidden_layers: teacher layers (0-based) whose token states :meth:`states` returns
            (hidden-state distillation); None: embeddings only.
    """

    def __init__(self, name_or_path: str, student_cfg: ModelConfig, device: torch.device,
                 hidden_layers: list[int] | None = None, max_cached: int = 200_000,
                 max_state_bytes: int = 1 << 30, precision: str = "fp32"):
        from embedray.models.encoder import BiEncoder

        cfg = ModelConfig(name_or_path=name_or_path, query_prompt=student_cfg.query_prompt,
                          doc_prompt=student_cfg.doc_prompt)
        self.model = BiEncoder.from_config(cfg).eval().to(device)
        self.model.precision = precision
        for p in self.model.parameters():
            p.requires_grad_(False)
        n_layers = self.model.backbone.config.num_hidden_layers
        if hidden_layers is not None and (not hidden_layers or any(not 0 <= i < n_layers for i in hidden_layers)):
            raise ValueError(f"distill.hidden_layers: the teacher has layers 0..{n_layers - 1}, got {hidden_layers}")
        self.hidden_layers = list(hidden_layers) if hidden_layers is not None else None
        self.device = device
        self.max_cached = max_cached
        self.max_state_bytes = max_state_bytes
        self._seen: dict[tuple[int, str], torch.Tensor] = {}    # (max_length, text) → (teacher_dim,)
        self._states: dict[tuple[int, str], torch.Tensor] = {}  # (max_length, text) → (tokens, layers, hidden) fp16
        self._state_bytes = 0
        self.encoded = 0  # texts run through the teacher (the rest came from memory)

    @property
    def dim(self) -> int:
        return self.model.embedding_dim

    @torch.no_grad()
    def _run(self, keys: list[tuple[int, str]]) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor | None]]:
        """Encode the keys not yet remembered (one forward pass); remember what fits."""
        want_states = self.hidden_layers is not None
        todo = list(dict.fromkeys(k for k in keys if k not in self._seen or (want_states and k not in self._states)))
        fresh: dict = {}
        if not todo:
            return fresh
        tok = self.model.tokenize([t for _, t in todo], max_length=todo[0][0])
        tok = {k: v.to(self.device) for k, v in tok.items()}
        if want_states:
            emb, hidden = self.model(**tok, return_hidden=True)
            stacked = torch.stack([hidden[i] for i in self.hidden_layers], dim=2)  # (m, L, layers, H)
            lengths = tok["attention_mask"].sum(1).tolist()
            states = [stacked[i, :n].to(torch.float16) for i, n in enumerate(lengths)]
        else:
            emb, states = self.model(**tok), [None] * len(todo)                      # (m, teacher_dim)
        self.encoded += len(todo)
        for key, row, st in zip(todo, emb, states):
            fresh[key] = (row, st)
            if len(self._seen) < self.max_cached:
                self._seen[key] = row
            if st is not None and self._state_bytes + st.numel() * 2 <= self.max_state_bytes:
                self._states[key] = st
                self._state_bytes += st.numel() * 2
        return fresh

    def encode(self, texts: list[str], max_length: int) -> torch.Tensor:
        """``(n, teacher_dim)`` embeddings of ``texts`` tokenised to ``max_length``."""
        keys = [(max_length, t) for t in texts]
        fresh = self._run(keys)
        return torch.stack([fresh[k][0] if k in fresh else self._seen[k] for k in keys])  # (n, D_t)

    def states(self, texts: list[str], max_length: int, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """Token states of ``hidden_layers``: one ``(n, seq, hidden)`` float32 tensor per layer,
        padded like the student's batch (``attention_mask`` ``(n, seq)``: the same tokenizer and
        ``max_length`` give the same tokens)."""
        if self.hidden_layers is None:
            raise ValueError("this teacher was built without hidden_layers")
        keys = [(max_length, t) for t in texts]
        fresh = self._run(keys)
        n, seq = attention_mask.shape
        hidden = self.model.backbone.config.hidden_size
        out = torch.zeros(n, seq, len(self.hidden_layers), hidden, device=attention_mask.device)
        for i, (key, length) in enumerate(zip(keys, attention_mask.sum(1).tolist())):
            st = fresh[key][1] if key in fresh else self._states[key]
            if st.shape[0] != length:
                raise ValueError(f"teacher and student tokenise {key[1][:60]!r} differently ({st.shape[0]} vs "
                                 f"{length} tokens): hidden-state distillation needs the same tokenizer")
            out[i, :length] = st.float()
        return list(out.unbind(2))                                                   # layers × (n, seq, H)


def hidden_layer_map(distill: DistillConfig, student: ModelConfig) -> list[int]:
    """The teacher layer each student layer copies under ``loss.distill_hidden``:
    ``distill.hidden_layers``, else the ``kept_layers`` a layer-reduced student records."""
    if distill.hidden_layers is not None:
        return list(distill.hidden_layers)
    meta = resolve_model(student.name_or_path) / "embedray.json"
    training = json.loads(meta.read_text(encoding="utf-8")).get("training", {}) if meta.exists() else {}
    kept = training.get("kept_layers") if training.get("init") == "layer_reduced_student" else None
    if not kept:
        raise ValueError(f"loss.distill_hidden: {student.name_or_path} is not a layer-reduced copy of the "
                         f"teacher (no kept_layers in its embedray.json); set distill.hidden_layers")
    return list(kept)


def candidate_cosines(q: torch.Tensor, d: torch.Tensor, b: int, n: int) -> torch.Tensor:
    """(B, 1+N) teacher cosines of each query with its positive then negatives."""
    d_pos, d_neg = d[:b], d[b:].view(b, n, -1)                       # (B, D), (B, N, D)
    pos = (q * d_pos).sum(-1, keepdim=True)                           # (B, 1)
    neg = torch.einsum("bd,bnd->bn", q, d_neg) if n else q.new_zeros(b, 0)   # (B, N)
    return torch.cat([pos, neg], dim=1)


def in_batch_cosines(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """(B, B + B*N) teacher cosines of each query with every document of the batch, in the
    batch's document order (positives, then each query's negatives)."""
    return similarity_matrix(q, d, "dot")


#: The run's cross-encoder gate verdict (written by the pipeline's dev check), with the chosen temperature.
GATE_FILE = "cross_encoder_gate.json"
#: Probabilities are clipped to [EPS, 1 - EPS] before the logit (float32 sigmoid outputs saturate).
PROB_EPS = 1e-6
#: Temperatures :func:`choose_temperature` tries (geometric, 1/16 … 8).
TEMPERATURE_GRID = tuple(2.0 ** k for k in range(-4, 4))


def ce_logits(probs: torch.Tensor) -> torch.Tensor:
    """The cross-encoder's logits back from the sigmoid probabilities a pool stores.

    A one-logit cross-encoder's scores are ``sigmoid(logit)`` in [0, 1]; a softmax over them is
    nearly flat (every score within 1 of every other), so distillation targets are built from
    ``logit = log(p / (1 - p))`` instead, clipped at :data:`PROB_EPS`.
    """
    p = probs.clamp(PROB_EPS, 1 - PROB_EPS)
    return torch.log(p) - torch.log1p(-p)


def choose_temperature(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
                       grid: Sequence[float] = TEMPERATURE_GRID, logits: bool = False) -> dict:
    """The temperature ``T`` under which ``softmax(logit / T)`` over each query's candidates best
    predicts its relevant documents (temperature scaling on held-out queries).

    Args:
        qrels: query id → {doc id: relevance}; only relevance > 0 counts.
        run: query id → {doc id: cross-encoder probability} over that query's candidates (the
            bi-encoder's top-k reranked on dev).
        grid: temperatures tried.
        logits: the run's scores are logits already (fused scores), not probabilities.

    Returns:
        ``{"value": T, "nll": {T: mean negative log-likelihood}, "queries": n}``: ``value`` is
        the grid's argmin (1.0 when no query has a relevant candidate).
    """
    rows = []
    for q, docs in run.items():
        relevant = [i for i, d in enumerate(docs) if qrels.get(q, {}).get(d, 0) > 0]
        if relevant and len(docs) > 1:
            scores = torch.tensor(list(docs.values()), dtype=torch.float64)
            rows.append((scores if logits else ce_logits(scores), relevant))
    if not rows:
        return {"value": 1.0, "nll": {}, "queries": 0}
    nll = {}
    for t in grid:
        total = 0.0
        for logits, relevant in rows:
            log_p = torch.log_softmax(logits / t, dim=0)  # (candidates,)
            total += float(-log_p[relevant].mean())
        nll[float(t)] = round(total / len(rows), 6)
    return {"value": min(nll, key=nll.get), "nll": nll, "queries": len(rows)}


def resolve_ce_temperature(distill: DistillConfig, run_dir, say: bool = True) -> DistillConfig:
    """``distill`` with ``cross_encoder_temperature`` filled in under ``score_source: cross_encoder``:
    as given, else the one the run's dev check chose (its cross-encoder gate file), else 1.0.
    Under ``score_source: fused``, ``fusion_alpha`` and ``fusion_temperature`` likewise
    (:func:`resolve_fusion`)."""
    if distill.score_source == "fused":
        return resolve_fusion(distill, run_dir, say)
    if distill.score_source != "cross_encoder" or distill.cross_encoder_temperature is not None:
        return distill
    gate_file = Path(run_dir) / GATE_FILE
    chosen = json.loads(gate_file.read_text()).get("temperature") if gate_file.is_file() else None
    value, where = (float(chosen), "chosen on dev") if chosen else (1.0, "no dev check chose one")
    if say:
        print(f"[embedray] cross-encoder distillation targets: logits / {value:g} ({where})", flush=True)
    return dataclasses.replace(distill, cross_encoder_temperature=value)


def resolve_fusion(distill: DistillConfig, run_dir, say: bool = True) -> DistillConfig:
    """``distill`` with ``fusion_alpha`` and ``fusion_temperature`` filled in under
    ``score_source: fused``: as given, else the weight and temperature the run's gate chose on dev
    (its gate file's ``fusion``); the temperature falls back to 1.0, the weight is an error."""
    gate_file = Path(run_dir) / GATE_FILE
    verdict = json.loads(gate_file.read_text()) if gate_file.is_file() else {}
    fusion = verdict.get("fusion") or {}
    alpha, temperature = distill.fusion_alpha, distill.fusion_temperature
    where = "distill.fusion_alpha"
    if alpha is None:
        if "alpha" not in fusion:
            raise ValueError("distill.score_source: fused needs the weight of the cross-encoder's score: set "
                             "distill.fusion_alpha, or let the cross-encoder gate choose it on dev ("
                             + (f"this run's gate: {verdict['why']}" if verdict.get("why") else
                                f"no gate verdict in {gate_file}") + ")")
        alpha, where = float(fusion["alpha"]), "chosen on dev"
    if temperature is None:
        chosen = fusion.get("temperature") if float(fusion.get("alpha", -1)) == float(alpha) else None
        temperature = float(chosen) if chosen else 1.0
    if say:
        print(f"[embedray] fused distillation targets: ({alpha:g} z(cross-encoder logit) + {1 - alpha:g} "
              f"z(teacher cosine)) / {temperature:g} (weight: {where})", flush=True)
    return dataclasses.replace(distill, fusion_alpha=float(alpha), fusion_temperature=float(temperature))


def fused_targets(ce_logit_scores: torch.Tensor, teacher_cosines: torch.Tensor, alpha: float,
                  temperature: float = 1.0) -> torch.Tensor:
    """(B, K) distillation targets from the cross-encoder fused with the teacher bi-encoder, the
    way the gate fuses them (:func:`embedray.mining.fusion.fuse`) over each row's candidates:
    ``(α · z(cross-encoder logit) + (1 − α) · z(teacher cosine)) / temperature``, ``z``
    standardising a row (a row whose scores are all equal gives zeros).

    Args:
        ce_logit_scores: ``(B, K)`` the cross-encoder's logits of each row's candidates (the
            pool's probabilities through :func:`ce_logits`, as :func:`pool_scores` gives them).
        teacher_cosines: ``(B, K)`` the teacher's cosines of the same candidates.
        alpha: the cross-encoder's weight in [0, 1].
        temperature: divides the fused scores (chosen on dev).
    """
    def z(x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        std = x.std(dim=1, unbiased=False, keepdim=True)
        return torch.where(std > 0, (x - x.mean(dim=1, keepdim=True)) / std.clamp_min(1e-12), torch.zeros_like(x))

    fused = alpha * z(ce_logit_scores) + (1 - alpha) * z(teacher_cosines)
    return (fused / temperature).to(torch.float32)


def pool_scores(query_ids: list[str], pos_ids: list[str], neg_ids: list[list[str]],
                scores: dict[str, dict[str, float]], source: str = "cross_encoder",
                temperature: float = 1.0) -> torch.Tensor:
    """(B, 1+N) teacher scores by query and document: the pool's cross-encoder probabilities as
    logits divided by ``temperature`` (:func:`ce_logits`), or the rows' own scores as they are
    (``source`` ``data``); a missing score is an error (not a silent 0), except, for the pool's
    scores, a negative of a query whose positive is scored: a random top-up of a query the
    denoiser left fewer negatives than ``train.num_negatives``, which takes the lowest
    probability a cross-encoder gives (:data:`PROB_EPS`: a random corpus document is taken as
    irrelevant)."""
    rows = []
    for q, p, negs in zip(query_ids, pos_ids, neg_ids):
        by_doc = scores.get(q, {})
        top_ups_floor = source == "cross_encoder" and p in by_doc
        try:
            rows.append([by_doc[p], *(by_doc.get(d, PROB_EPS) if top_ups_floor else by_doc[d] for d in negs)])
        except KeyError as e:
            if source == "data":
                raise ValueError(f"distill.score_source=data: the training rows give no score for query {q!r}, "
                                 f"document {e.args[0]!r}; every row needs pos_scores and neg_scores, and "
                                 "train.num_negatives may not exceed the negatives a row scores (random "
                                 "top-ups have no score)") from None
            raise ValueError(f"distill.score_source=cross_encoder: the pool has no cross-encoder score for "
                             f"query {q!r}, document {e.args[0]!r}; mine with a cross-encoder "
                             f"(refresh.denoise: true) or use score_source: teacher") from None
    out = torch.tensor(rows, dtype=torch.float32)  # (B, 1+N)
    return ce_logits(out) / temperature if source == "cross_encoder" else out
