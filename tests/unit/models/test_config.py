import pytest

from embedray.models.config import ModelConfig


def test_defaults_are_valid():
    cfg = ModelConfig()
    assert (cfg.pooling, cfg.finetune, cfg.normalize, cfg.lora_r) == ("auto", "full", True, 16)


@pytest.mark.parametrize("kwargs, field", [
    ({"pooling": "max"}, "pooling"),
    ({"finetune": "adapter"}, "finetune"),
    ({"dtype": "float16"}, "dtype"),
    ({"qlora_bits": 3}, "qlora_bits"),
    ({"lora_dropout": 1.0}, "lora_dropout"),
    ({"lora_r": 0}, "lora_r"),
    ({"projection_dim": -4}, "projection_dim"),
    ({"max_seq_length": 0}, "max_seq_length"),
    ({"lora_target_modules": "query"}, "lora_target_modules"),
    ({"lora_target_modules": []}, "lora_target_modules"),
    ({"name_or_path": " "}, "name_or_path"),
    ({"query_prompt": None}, "query_prompt"),
])
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"model.{field}"):
        ModelConfig(**kwargs)


def test_target_modules_copied_to_list():
    cfg = ModelConfig(lora_target_modules=("query", "value"))
    assert cfg.lora_target_modules == ["query", "value"]
