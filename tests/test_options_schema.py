"""One schema for the design options: the config, its docstring and every command line derive from
``OPTIONS``, so every option is reachable from ``llm-embed-train`` and ``llm-embed-study``."""

from __future__ import annotations

import inspect
import json

import pytest
from transformers import LlamaConfig

from llm_embed import LLMEmbeddingConfig
from llm_embed.cli import config_kwargs
from llm_embed.configuration_llm_embed import OPTIONS, RENAMED_OPTIONS

from .conftest import tiny_backbone_config

# A value other than the default for every option; a new option without one fails the test below.
SAMPLES = {
    "attention": "causal",
    "pooling": "mean",
    "layer_reduction": "last_token",
    "pooling_layers": [1, -1],
    "num_latents": 3,
    "pooling_attention_heads": 2,
    "pooling_head_dim": 8,
    "pooling_ff_mult": 2.0,
    "pooling_residual": True,
    "output_dim": 16,
    "normalize": False,
    "prompts": {"query": "Q: ", "document": "D: "},
    "default_prompt_name": "query",
    "max_seq_length": 64,
    "append_eos": False,
    "padding_side": "left",
    "initializer_range": 0.01,
    "loss_temperature": 0.1,
    "loss_symmetric": True,
    "loss_mask_duplicates": True,
    "loss_gather_across_ranks": False,
    "loss_mini_batch_size": 4,
}


def command_line(name: str, value, dashes: bool) -> list[str]:
    flag = "--" + (name.replace("_", "-") if dashes else name)
    if isinstance(value, bool):
        return [flag, str(value).lower()]
    if isinstance(value, list):
        return [flag, *map(str, value)]
    if isinstance(value, dict):
        return [flag, json.dumps(value)]
    return [flag, str(value)]


def test_every_option_has_a_sample_and_the_constructor_matches_the_schema():
    names = [option.name for option in OPTIONS]
    assert set(SAMPLES) == set(names)
    parameters = inspect.signature(LLMEmbeddingConfig.__init__).parameters
    assert list(parameters)[2:-1] == names  # self, backbone_config, the options, **kwargs
    for option in OPTIONS:
        assert parameters[option.name].default == option.default, option.name
        assert f"{option.name} (`{option.kind}`" in LLMEmbeddingConfig.__doc__
    # the head options need the one head that reads them all; the pooling sample is checked on its own
    config = LLMEmbeddingConfig(backbone_config=tiny_backbone_config("llama"), **{**SAMPLES, "pooling": "multi_layer"})
    for name, value in SAMPLES.items():
        assert getattr(config, name) == value or name == "pooling"
    assert LLMEmbeddingConfig(backbone_config=tiny_backbone_config("llama"), pooling=SAMPLES["pooling"]).pooling == \
        SAMPLES["pooling"]


def test_every_option_is_reachable_from_llm_embed_train():
    from llm_embed.train import build_parser

    parser = build_parser()
    for name, value in SAMPLES.items():
        argv = ["--train_file", "x.jsonl", "--output_dir", "out", *command_line(name, value, dashes=False)]
        *_, given = parser.parse_args_into_dataclasses(argv)
        assert config_kwargs(given) == {name: value}, name
    # nothing given: nothing passed on, so derived defaults stay derived
    assert len(parser.parse_args_into_dataclasses(["--train_file", "x.jsonl", "--output_dir", "out"])) == 3


def test_every_option_is_reachable_from_llm_embed_study():
    from llm_embed.study import DESIGN_OPTIONS, DESIGNS, parse_args

    for name, value in SAMPLES.items():
        if name in DESIGN_OPTIONS:
            continue
        args = parse_args(command_line(name, value, dashes=True))
        assert config_kwargs(args) == {name: value}, name
    # attention and pooling are what --designs chooses: every value of both is some design's
    assert {attention for attention, _ in DESIGNS.values()} == {"causal", "bidirectional"}
    assert {"last_token", "latent_attention", "multi_layer"} <= {pooling for _, pooling in DESIGNS.values()}
    assert config_kwargs(parse_args([])) == {}


def test_old_option_names_still_work_everywhere(tmp_path):
    old, new = next(iter(RENAMED_OPTIONS.items()))
    assert (old, new) == ("pooling_heads", "pooling_attention_heads")
    config = LLMEmbeddingConfig(backbone_config=tiny_backbone_config("llama"), pooling_heads=2)
    assert config.pooling_attention_heads == 2 and config.pooling_heads == 2
    config.pooling_heads = 4
    assert config.pooling_attention_heads == 4
    with pytest.raises(ValueError, match="pooling_heads must be a positive integer"):
        config.pooling_heads = 0
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["pooling_attention_heads"] == 4 and "pooling_heads" not in saved
    saved[old] = saved.pop(new)  # a checkpoint saved before the rename
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert LLMEmbeddingConfig.from_pretrained(tmp_path).pooling_attention_heads == 4
    with pytest.raises(ValueError, match="same option"):
        LLMEmbeddingConfig(backbone_config=tiny_backbone_config("llama"), pooling_heads=2, pooling_attention_heads=3)
    from llm_embed.study import parse_args
    from llm_embed.train import build_parser

    assert config_kwargs(parse_args(["--pooling-heads", "2"])) == {new: 2}
    *_, given = build_parser().parse_args_into_dataclasses(["--train_file", "x", "--output_dir", "o",
                                                             "--pooling_heads", "2"])
    assert config_kwargs(given) == {new: 2}


def test_max_seq_length_defaults_to_the_backbones_positions_when_not_given():
    short = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        vocab_size=100, max_position_embeddings=128)
    assert LLMEmbeddingConfig(backbone_config=short).max_seq_length == 128
    assert LLMEmbeddingConfig(backbone_config=tiny_backbone_config("llama")).max_seq_length == 512
    with pytest.raises(ValueError, match="max_seq_length=512 exceeds the backbone's max_position_embeddings=128"):
        LLMEmbeddingConfig(backbone_config=short, max_seq_length=512)
