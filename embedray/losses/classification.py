"""Classification as an embedding objective: a linear head on the pooled embedding, cross-entropy
on labels. The encoder is what is kept; the head is saved beside it."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ClassificationLoss(nn.Module):
    """Cross-entropy of ``head(embedding)`` against each text's label.

    Args:
        dim: embedding size.
        labels: the label names; a target is an index into this list.
        temperature: logits are ``head(embedding) / temperature``: normalised embeddings bound
            the head's outputs, and the temperature gives the softmax its range (as InfoNCE's does).
        label_smoothing: as in ``torch.nn.functional.cross_entropy``.

    Inputs: ``emb`` ``(B, dim)`` embeddings of the labelled texts, ``targets`` ``(B,)`` int64.

    Example:
        ::

            loss_fn = ClassificationLoss(384, ["admin", "libs", "utils"])
            loss = loss_fn(model(texts), torch.tensor([2, 0, 1]))
            loss.backward()
            loss_fn.save_head("model/classifier")
    """

    def __init__(self, dim: int, labels: list[str], temperature: float = 0.05, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError(f"classification needs at least 2 distinct labels, got {labels[:5]}")
        self.labels = list(labels)
        self.label_smoothing = float(label_smoothing)
        self.head = nn.Linear(dim, len(labels))

    def forward(self, emb: Tensor, targets: Tensor) -> Tensor:
        """Return the mean cross-entropy."""
        logits = self.head(emb.to(self.head.weight.dtype)) / self.temperature
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)

    def batch_loss(self, q: Tensor | None, d_pos: Tensor, d_neg: Tensor | None = None, *,
                   labels: Tensor | None = None, **ids) -> Tensor:
        """A training batch of labelled texts: the loop encodes each as the row's document."""
        if labels is None:
            raise ValueError("loss.name: classification needs labelled rows (data.train_labels)")
        return self(d_pos, labels)

    def save_head(self, folder: str | Path) -> None:
        """Write ``head.safetensors`` and ``labels.json`` (the label of each output) to ``folder``."""
        from safetensors.torch import save_file

        from embedray.atomic import atomic_path, write_json_atomic

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "head.safetensors") as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, str(tmp))
        write_json_atomic({"labels": self.labels, "in_features": self.head.in_features, "temperature": self.temperature,
                           "format": "logits = (embedding @ weight.T + bias) / temperature"}, folder / "labels.json")


def load_head(folder: str | Path) -> tuple[nn.Linear, list[str]]:
    """The head :meth:`ClassificationLoss.save_head` wrote, and its labels."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = json.loads((folder / "labels.json").read_text())
    head = nn.Linear(meta["in_features"], len(meta["labels"]))
    head.load_state_dict(load_file(str(folder / "head.safetensors")))
    return head.eval(), meta["labels"]


def predict(head: nn.Linear, emb) -> list[int]:
    """Label indices of ``(n, dim)`` embeddings (numpy or torch)."""
    with torch.no_grad():
        return head(torch.as_tensor(emb, dtype=head.weight.dtype)).argmax(-1).tolist()
