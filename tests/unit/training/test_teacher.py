"""The frozen teacher beside the student: each text is run through it once."""
import torch

from embedray.models.config import ModelConfig
from embedray.training.distill import Teacher


def test_teacher_encodes_each_text_once_and_gives_the_same_embeddings():
    teacher = Teacher("tiny-bert", ModelConfig("tiny-bert"), torch.device("cpu"))
    first = teacher.encode(["apt package manager", "a text editor", "apt package manager"], max_length=16)
    assert first.shape == (3, teacher.dim) and teacher.encoded == 2  # the repeat is encoded once
    assert torch.equal(first[0], first[2])

    again = teacher.encode(["a text editor", "a mail client", "apt package manager"], max_length=16)
    assert teacher.encoded == 3  # only the new text ran through the model
    alone = Teacher("tiny-bert", ModelConfig("tiny-bert"), torch.device("cpu"))
    expected = alone.encode(["a text editor", "a mail client", "apt package manager"], max_length=16)
    assert torch.allclose(again, expected, atol=1e-6)

    teacher.encode(["a text editor"], max_length=4)  # another truncation is another input
    assert teacher.encoded == 4
    assert not again.requires_grad


def test_teacher_memory_is_bounded():
    teacher = Teacher("tiny-bert", ModelConfig("tiny-bert"), torch.device("cpu"), max_cached=2)
    out = teacher.encode(["one", "two", "three"], max_length=8)
    assert out.shape[0] == 3 and teacher.encoded == 3
    teacher.encode(["three"], max_length=8)  # beyond the bound: encoded again, still right
    assert teacher.encoded == 4
    teacher.encode(["one", "two"], max_length=8)
    assert teacher.encoded == 4
