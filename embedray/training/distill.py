"""Teacher signals for distillation: a frozen teacher bi-encoder run beside the student, and the
cross-encoder scores that mined pools carry."""
from __future__ import annotations

import torch

from embedray.models.config import ModelConfig


class Teacher:
    """A frozen bi-encoder: embeddings and candidate scores for a batch, no gradients.

    Its embeddings never change, and training sees each query, positive and sampled negative
    several times (every epoch, every worker), so each text is encoded once and remembered, up
    to ``max_cached`` texts (then the rest is encoded every time it comes up).
    """

    def __init__(self, name_or_path: str, student_cfg: ModelConfig, device: torch.device,
                 max_cached: int = 200_000):
        from embedray.models.encoder import BiEncoder

        cfg = ModelConfig(name_or_path=name_or_path, query_prefix=student_cfg.query_prefix,
                          doc_prefix=student_cfg.doc_prefix)
        self.model = BiEncoder.from_config(cfg).eval().to(device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.device = device
        self.max_cached = max_cached
        self._seen: dict[tuple[int, str], torch.Tensor] = {}  # (max_length, text) → (teacher_dim,)
        self.encoded = 0  # texts run through the teacher (the rest came from memory)

    @property
    def dim(self) -> int:
        return self.model.embedding_dim

    @torch.no_grad()
    def encode(self, texts: list[str], max_length: int) -> torch.Tensor:
        keys = [(max_length, t) for t in texts]
        todo = list(dict.fromkeys(k for k in keys if k not in self._seen))
        fresh = {}
        if todo:
            tok = self.model.tokenize([t for _, t in todo], max_length=max_length)
            out = self.model(**{k: v.to(self.device) for k, v in tok.items()})  # (m, teacher_dim)
            fresh = dict(zip(todo, out))
            self.encoded += len(todo)
            for key, row in fresh.items():
                if len(self._seen) >= self.max_cached:
                    break
                self._seen[key] = row
        return torch.stack([fresh[k] if k in fresh else self._seen[k] for k in keys])  # (n, teacher_dim)


def candidate_scores(q: torch.Tensor, d: torch.Tensor, b: int, n: int, temperature: float) -> torch.Tensor:
    """(B, 1+N) teacher scores: cosine / temperature of each query with its positive then negatives."""
    d_pos, d_neg = d[:b], d[b:].view(b, n, -1)                       # (B, D), (B, N, D)
    pos = (q * d_pos).sum(-1, keepdim=True)                           # (B, 1)
    neg = torch.einsum("bd,bnd->bn", q, d_neg) if n else q.new_zeros(b, 0)   # (B, N)
    return torch.cat([pos, neg], dim=1) / temperature


def in_batch_scores(q: torch.Tensor, d: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, B + B*N) teacher scores: cosine / temperature of each query with every document of the
    batch, in the batch's document order (positives, then each query's negatives)."""
    from embedray.losses.similarity import similarity_matrix
    return similarity_matrix(q, d, "dot") / temperature


def pool_scores(query_ids: list[str], pos_ids: list[str], neg_ids: list[list[str]],
                scores: dict[str, dict[str, float]]) -> torch.Tensor:
    """(B, 1+N) cross-encoder scores from the pool; a missing score is an error (not a silent 0)."""
    rows = []
    for q, p, negs in zip(query_ids, pos_ids, neg_ids):
        by_doc = scores.get(q, {})
        try:
            rows.append([by_doc[p], *(by_doc[d] for d in negs)])
        except KeyError as e:
            raise ValueError(f"distill.score_source=cross_encoder: the pool has no cross-encoder score for "
                             f"query {q!r}, document {e.args[0]!r}; mine with a cross-encoder "
                             f"(refresh.denoise: true) or use score_source: teacher") from None
    return torch.tensor(rows, dtype=torch.float32)
