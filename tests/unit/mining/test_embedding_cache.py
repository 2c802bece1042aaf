"""Embedding cache keyed by (weights fingerprint, text hash)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from embedray.mining.cache import (ShardedCache, encode_with_cache, folder_fingerprint,
                                   state_dict_fingerprint, text_hash, with_precision)


class CountingEncoder:
    """A deterministic fake encoder that records how many texts it was asked to encode."""

    def __init__(self, dim: int = 4, salt: float = 0.0):
        self.calls: list[int] = []
        self.dim, self.salt = dim, salt

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        return np.array([[len(t) + self.salt, t.count("a"), i % 3, 1.0] for i, t in enumerate(texts)],
                        np.float32)[:, :self.dim]

    @property
    def encoded(self) -> int:
        return sum(self.calls)


DOCS = ["alpha", "beta", "gamma delta", "epsilon", "alpha"]  # one duplicate text


def test_second_run_encodes_nothing(tmp_path):
    enc = CountingEncoder()
    first = encode_with_cache(DOCS, enc, "fpA", tmp_path)
    assert first.n_encoded == 4 and enc.encoded == 4  # the duplicate is encoded once
    second = encode_with_cache(DOCS, CountingEncoder(), "fpA", tmp_path)
    assert second.n_encoded == 0 and second.n_cached == 5
    np.testing.assert_array_equal(first.embeddings, second.embeddings)
    # a fresh process sees the same shards
    fresh = CountingEncoder()
    encode_with_cache(DOCS, fresh, "fpA", tmp_path)
    assert fresh.encoded == 0


def test_changed_doc_encodes_one(tmp_path):
    encode_with_cache(DOCS, CountingEncoder(), "fpA", tmp_path)
    enc = CountingEncoder()
    changed = DOCS[:2] + ["gamma delta (edited)"] + DOCS[3:]
    res = encode_with_cache(changed, enc, "fpA", tmp_path)
    assert enc.calls == [1] and res.n_encoded == 1
    assert res.embeddings[2, 0] == len("gamma delta (edited)")


def test_new_weights_encode_all(tmp_path):
    encode_with_cache(DOCS, CountingEncoder(), "fpA", tmp_path)
    enc = CountingEncoder(salt=1.0)
    res = encode_with_cache(DOCS, enc, "fpB", tmp_path)
    assert enc.encoded == 4 and res.n_cached == 1  # only the duplicate text is a hit
    assert res.embeddings[0, 0] == len("alpha") + 1.0


def test_prompt_is_part_of_the_key(tmp_path):
    encode_with_cache(DOCS, CountingEncoder(), "fp", tmp_path, prompt="d|")
    enc = CountingEncoder()
    encode_with_cache(DOCS, enc, "fp", tmp_path, prompt="q|")
    assert enc.encoded == 4
    assert text_hash("x", "a") != text_hash("x", "b")


def test_precision_is_part_of_the_key(tmp_path):
    """bf16 embeddings differ from fp32 ones in the last digits: neither stands in for the other."""
    from embedray.models.precision import resolve_precision

    assert with_precision("fp", "fp32") == "fp"              # fp32 entries keep the bare fingerprint
    assert with_precision("fp", "bf16") == "fp.bf16"
    assert with_precision("fp", "auto") == with_precision("fp", resolve_precision("auto"))
    encode_with_cache(DOCS, CountingEncoder(), with_precision("fp", "fp32"), tmp_path)
    enc = CountingEncoder()
    encode_with_cache(DOCS, enc, with_precision("fp", "bf16"), tmp_path)
    assert enc.encoded == 4
    again = CountingEncoder()
    encode_with_cache(DOCS, again, with_precision("fp", "bf16"), tmp_path)
    assert again.encoded == 0


def test_no_cache_dir_encodes_everything():
    enc = CountingEncoder()
    res = encode_with_cache(DOCS, enc, "fp", None)
    assert enc.encoded == 5 and res.embeddings.shape == (5, 4)


def test_uncommitted_shard_is_ignored(tmp_path):
    cache = ShardedCache(tmp_path / "c")
    cache.put(["k1"], np.ones((1, 3)))
    # a writer killed after the .npy but before its .json marker
    np.save(tmp_path / "c" / "shard-dead.npy", np.zeros((1, 3), np.float32))
    fresh = ShardedCache(tmp_path / "c")
    assert len(fresh) == 1 and "k1" in fresh
    assert not list((tmp_path / "c").glob(".*tmp"))


def test_state_dict_fingerprint_tracks_every_weight():
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 3)
    a = state_dict_fingerprint(m.state_dict())
    assert a == state_dict_fingerprint({k: v.clone() for k, v in m.state_dict().items()})
    with torch.no_grad():
        m.bias[1] += 1e-6
    assert state_dict_fingerprint(m.state_dict()) != a
    assert state_dict_fingerprint(m.state_dict(), extra="max_len=64") != state_dict_fingerprint(m.state_dict())


def test_folder_fingerprint(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(tmp_path / "model.safetensors"))
    a = folder_fingerprint(tmp_path)
    save_file({"w": torch.ones(3)}, str(tmp_path / "model.safetensors"))
    assert folder_fingerprint(tmp_path) != a
    with pytest.raises(ValueError, match="no \\*.safetensors"):
        folder_fingerprint(tmp_path / "nothing-here")
