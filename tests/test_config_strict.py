"""Values are type-checked wherever they enter (constructor, a hand-edited config.json, attribute
assignment, forward), encoders are refused, and a config without a backbone never builds a default."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModel, BertConfig, T5Config

from llm_embed import LLMEmbeddingConfig, LLMEmbeddingModel

from .conftest import tiny_backbone_config, tiny_model

BOOLEAN_OPTIONS = ["normalize", "append_eos", "loss_symmetric", "loss_gather_across_ranks"]


@pytest.mark.parametrize("name", BOOLEAN_OPTIONS)
@pytest.mark.parametrize("value", ["false", "true", 0, 1, None])
def test_boolean_options_refuse_non_booleans(name, value):
    with pytest.raises(ValueError, match=f"{name} must be true or false"):
        LLMEmbeddingConfig(backbone_config=tiny_backbone_config("llama"), **{name: value})


@pytest.mark.parametrize("name", BOOLEAN_OPTIONS)
def test_hand_edited_config_json_with_quoted_boolean_is_refused_at_load(tmp_path, name):
    folder = tmp_path / "ckpt"
    tiny_model("llama", "bidirectional", "mean").save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config[name] = "false"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"{name} must be true or false .*'false'"):
        AutoModel.from_pretrained(folder)


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("max_seq_length", 0, "max_seq_length must be a positive integer"),
        ("max_seq_length", -5, "max_seq_length must be a positive integer"),
        ("max_seq_length", 12.0, "max_seq_length must be a positive integer"),
        ("normalize", "no", "normalize must be true or false"),
        ("append_eos", "false", "append_eos must be true or false"),
        ("pooling_layers", 3, r"pooling_layers must be a list of layer numbers .* write \[3\]"),
        ("prompts", {"query": None}, "prompts must be a dict of name -> prefix string"),
        ("padding_side", "top", "padding_side must be one of"),
        ("loss_temperature", 0, "loss_temperature must be a positive number"),
        ("loss_mini_batch_size", 0, "loss_mini_batch_size must be a positive integer"),
        ("default_prompt_name", 3, "default_prompt_name must be a string or None"),
    ],
)
def test_assignment_is_checked(name, value, message):
    config = LLMEmbeddingConfig(backbone_config=tiny_backbone_config("llama"))
    before = getattr(config, name)
    with pytest.raises(ValueError, match=message):
        setattr(config, name, value)
    assert getattr(config, name) == before  # nothing was changed
    with pytest.raises(ValueError, match=message):  # and the same value in the constructor
        LLMEmbeddingConfig(backbone_config=tiny_backbone_config("llama"), **{name: value})


def test_run_time_assignment_on_a_model_is_checked(tokenizer):
    model = tiny_model("llama", "causal", "last_token")
    model.tokenizer = tokenizer
    with pytest.raises(ValueError, match="max_seq_length must be a positive integer"):
        model.config.max_seq_length = 0
    assert model.config.max_seq_length == 512
    model.config.max_seq_length = 8  # a valid value still works and takes effect
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(TypeError, match="normalize must be None"):
        model(input_ids=ids, normalize="no")


def test_edits_that_no_longer_describe_the_model_are_refused_before_saving(tokenizer, tmp_path):
    """Edited after the model was built, these options changed nothing in memory but were saved: the
    reloaded model gave other vectors (attention), or the folder no longer loaded (positions, prompts,
    head). Refused at the edit where the backbone alone says so, else by encode and save_pretrained
    before anything is written."""
    model = tiny_model("llama", "bidirectional", "mean")
    model.tokenizer = tokenizer
    positions = model.config.backbone_config.max_position_embeddings
    with pytest.raises(ValueError, match=f"max_seq_length={positions + 1} exceeds the backbone's"):
        model.config.max_seq_length = positions + 1
    with pytest.raises(ValueError, match=r"pooling_layers \[7\] are out of range"):
        model.config.pooling_layers = [7]
    for name, value in (("attention", "causal"), ("pooling", "latent_attention"), ("output_dim", 8)):
        built = getattr(model.config, name)
        setattr(model.config, name, value)
        message = f"config.{name} is {value!r} but the model was built with {built!r}"
        with pytest.raises(ValueError, match=message):
            model.encode(["a"])
        with pytest.raises(ValueError, match=message):
            model.save_pretrained(tmp_path / "m")
        assert not (tmp_path / "m").exists()
        setattr(model.config, name, built)
    model.config.default_prompt_name = "nope"
    with pytest.raises(ValueError, match="default_prompt_name='nope' is not in prompts"):
        model.save_pretrained(tmp_path / "m")
    model.config.default_prompt_name = None
    model.config.prompts["query"] = 3  # edited in place
    with pytest.raises(ValueError, match="prompts must be a dict of name -> prefix string"):
        model.save_pretrained(tmp_path / "m")
    model.config.prompts["query"] = "Q: "
    model.save_pretrained(tmp_path / "m")
    assert AutoModel.from_pretrained(tmp_path / "m").config.prompts["query"] == "Q: "


@pytest.mark.parametrize(
    "backbone, kind",
    [
        (BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16), "an encoder"),
        (T5Config(d_model=32, num_layers=2, num_heads=2, d_ff=16), "an encoder-decoder"),
    ],
)
@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_encoder_backbones_are_refused_at_config_time(backbone, kind, attention):
    with pytest.raises(ValueError, match=f"backbone model_type '{backbone.model_type}' is {kind}"):
        LLMEmbeddingConfig(backbone_config=backbone, attention=attention, pooling="mean")


def test_config_without_backbone_config_is_refused_before_building(tmp_path):
    folder = tmp_path / "ckpt"
    tiny_model("llama", "bidirectional", "mean").save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    del config["backbone_config"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="has no backbone_config"):
        AutoModel.from_pretrained(folder)
    with pytest.raises(ValueError, match="has no backbone_config"):
        LLMEmbeddingModel(LLMEmbeddingConfig(pooling="mean"))
    # the config itself still constructs with no arguments (transformers builds one to diff against)
    assert "_backbone_config_missing" not in LLMEmbeddingConfig().to_dict()


def test_folder_without_config_json_is_refused_at_once(tmp_path):
    folder = tmp_path / "ckpt"
    tiny_model("llama", "bidirectional", "mean").save_pretrained(folder)
    (folder / "config.json").unlink()
    with pytest.raises(OSError, match="holds no config.json"):
        LLMEmbeddingModel.from_pretrained(folder)
