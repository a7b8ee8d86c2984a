import json

import pytest
from transformers import AutoConfig, MambaConfig

from llm_embed import POOLING_HEADS, LLMEmbeddingConfig

from .conftest import tiny_backbone_config


def test_nested_backbone_config_round_trip(tmp_path):
    config = LLMEmbeddingConfig(backbone_config=tiny_backbone_config("qwen2"), attention="causal",
                                pooling="latent_attention", num_latents=4, output_dim=16)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "llm_embedding"
    assert saved["backbone_config"]["model_type"] == "qwen2"
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, LLMEmbeddingConfig)
    assert type(loaded.backbone_config).__name__ == "Qwen2Config"
    assert loaded.backbone_config.hidden_size == 32
    assert (loaded.attention, loaded.pooling, loaded.num_latents, loaded.output_dim) == (
        "causal", "latent_attention", 4, 16)
    assert loaded.embedding_dim == 16
    assert loaded.get_text_config() is loaded.backbone_config


def test_defaults_follow_the_paper():
    config = LLMEmbeddingConfig(backbone_config=tiny_backbone_config("llama"))
    assert (config.attention, config.pooling, config.layer_reduction) == ("bidirectional", "multi_layer", "mean")
    assert set(config.prompts) >= {"query", "document"} and config.prompts["document"] == ""
    causal = LLMEmbeddingConfig(backbone_config=tiny_backbone_config("llama"), attention="causal")
    assert causal.layer_reduction == "last_token"
    assert causal.resolved_pooling_layers == [1, 2, 3]
    assert LLMEmbeddingConfig(backbone_config=tiny_backbone_config("llama"),
                              pooling_layers=[1, -1]).resolved_pooling_layers == [1, 3]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(attention="sideways"), "attention must be one of"),
        (dict(pooling="max"), "pooling must be one of"),
        (dict(layer_reduction="median"), "layer_reduction must be one of"),
        (dict(padding_side="middle"), "padding_side must be one of"),
        (dict(num_latents=0), "num_latents must be a positive integer"),
        (dict(pooling_heads=-2), "pooling_heads must be a positive integer"),
        (dict(pooling_head_dim=0), "pooling_head_dim must be a positive integer"),
        (dict(max_seq_length=0), "max_seq_length must be a positive integer"),
        (dict(max_seq_length=5000), "exceeds the backbone's max_position_embeddings"),
        (dict(output_dim=0), "output_dim must be a positive integer"),
        (dict(pooling_ff_mult=0), "pooling_ff_mult must be a positive number"),
        (dict(pooling_layers=[0]), "out of range"),
        (dict(pooling_layers=[4]), "out of range"),
        (dict(pooling_layers=[]), "at least one layer"),
        (dict(pooling_layers=[3, -1]), "twice"),
        (dict(default_prompt_name="passage"), "not in prompts"),
        (dict(prompts={"query": 3}), "prompts must be a dict"),
        (dict(pooling_ff_mult=True), "pooling_ff_mult must be a positive number"),
        (dict(num_latent=8), "unknown option 'num_latent'; did you mean 'num_latents'"),
        (dict(atention="causal"), "did you mean 'attention'"),
    ],
)
def test_bad_values_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LLMEmbeddingConfig(backbone_config=tiny_backbone_config("llama"), **kwargs)


def test_error_lists_valid_choices():
    with pytest.raises(ValueError) as info:
        LLMEmbeddingConfig(backbone_config=tiny_backbone_config("llama"), pooling="cls")
    for name in POOLING_HEADS:
        assert name in str(info.value)


def test_backbone_that_cannot_be_bidirectional_is_refused():
    mamba = MambaConfig(hidden_size=32, num_hidden_layers=2, vocab_size=100)
    with pytest.raises(ValueError, match="cannot be applied to backbone model_type 'mamba'"):
        LLMEmbeddingConfig(backbone_config=mamba, attention="bidirectional", pooling="mean")
    # causal mode leaves such a backbone as it is
    assert LLMEmbeddingConfig(backbone_config=mamba, attention="causal", pooling="mean").attention == "causal"


def test_unknown_backbone_model_type_is_refused():
    with pytest.raises(ValueError, match="model_type that transformers knows"):
        LLMEmbeddingConfig(backbone_config={"model_type": "not-a-model", "hidden_size": 8})
