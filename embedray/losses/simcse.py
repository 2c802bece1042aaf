"""Unsupervised SimCSE: two dropout views of the same texts are each other's positives."""
from __future__ import annotations

from torch import Tensor, nn

from embedray.losses.infonce import GatherFn, info_nce
from embedray.losses.similarity import SIMILARITIES, Similarity, check_choice

# HF config attributes that hold dropout probabilities (BERT/MiniLM/MPNet, DistilBERT, others).
_CONFIG_DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
                        "hidden_dropout", "activation_dropout")


def set_dropout(module: nn.Module, p: float) -> int:
    """Set every dropout rate in ``module`` to ``p``; return how many ``nn.Dropout`` layers changed.

    SimCSE needs dropout active (the usual 0.1) so that two encodings of one text differ. Dropout is
    a model concern, so the loss does not touch the model: the training loop calls this once after
    loading the model (and keeps the model in ``train()`` mode while encoding both views).

    It sets ``p`` on every ``nn.Dropout`` (HF BERT reads ``self.dropout.p`` at forward time, also for
    attention dropout) and on the dropout fields of every HF ``config`` found on the submodules
    (``hidden_dropout_prob``, ``attention_probs_dropout_prob``, ...), so a saved model records it.

    Args:
        module: any module, e.g. a ``SentenceTransformer`` or a HF ``PreTrainedModel``.
        p: dropout probability in ``[0, 1)``.

    Returns:
        The number of ``nn.Dropout`` layers set.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout p must be in [0, 1), got {p}")
    changed = 0
    for sub in module.modules():
        if isinstance(sub, nn.Dropout):
            sub.p = p
            changed += 1
        config = getattr(sub, "config", None)
        for key in _CONFIG_DROPOUT_KEYS:
            if isinstance(getattr(config, key, None), float):
                setattr(config, key, p)
    return changed


class SimCSELoss(nn.Module):
    """Unsupervised SimCSE (Gao et al., 2021) on embeddings: InfoNCE where view 2 is the positive.

    The training loop encodes the same batch of texts twice with dropout on (see
    :func:`set_dropout`; model in ``train()`` mode), which gives two slightly different views. Each
    view-1 embedding must be closest to its own view-2 embedding among all view-2 embeddings of the
    batch.

    Args:
        temperature: softmax temperature (SimCSE uses 0.05).
        similarity: ``"cosine"`` (default) or ``"dot"``.
        gather_fn: opt-in cross-worker negatives, as in :class:`~embedray.losses.infonce.InfoNCELoss`.

    Inputs:
        +----------------------+--------------------------------------------------------------+
        | argument             | shape                                                        |
        +======================+==============================================================+
        | view1, view2         | ``(B, dim)``: the same texts encoded twice, with dropout     |
        | ids (optional)       | ``(B,)`` int64 text ids; duplicate texts are not negatives   |
        +----------------------+--------------------------------------------------------------+

    Example:
        ::

            set_dropout(model, 0.1)
            model.train()
            loss_fn = SimCSELoss(temperature=0.05)
            loss = loss_fn(model(texts), model(texts), ids=ids_to_tensor(text_ids))
            loss.backward()
    """

    def __init__(self, temperature: float = 0.05, *, similarity: Similarity = "cosine",
                 gather_fn: GatherFn | None = None) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        check_choice(similarity, SIMILARITIES, "similarity")
        self.temperature = float(temperature)
        self.similarity = similarity
        self.gather_fn = gather_fn

    def forward(self, view1: Tensor, view2: Tensor, ids: Tensor | None = None) -> Tensor:
        """Return the scalar loss for this worker's rows."""
        if view1.shape != view2.shape:
            raise ValueError(f"view1 and view2 must have the same shape, got {tuple(view1.shape)} and "
                             f"{tuple(view2.shape)}")
        rows = None
        if self.gather_fn is not None:
            local = view1.shape[0]
            view1, start = self.gather_fn(view1)
            view2 = self.gather_fn(view2)[0]
            ids = None if ids is None else self.gather_fn(ids)[0]
            rows = slice(start, start + local)
        # Without ids, identical view-2 rows cannot be told apart from duplicates; with dropout they
        # differ, so duplicate texts in a batch need ids to be masked.
        return info_nce(view1, view2, None, self.temperature, q_ids=ids, pos_ids=ids,
                        similarity=self.similarity, rows=rows)

    def batch_loss(self, q: Tensor, d_pos: Tensor, d_neg: Tensor | None = None, *, q_ids: Tensor | None = None,
                   **ids) -> Tensor:
        """A training batch of (text, same text) pairs: the loop encodes queries and positives in
        separate forward passes with dropout on, which are the two views; hard negatives are not
        part of SimCSE and are ignored."""
        return self(q, d_pos, ids=q_ids)
