"""Values are type-checked wherever they enter (constructor, a hand-edited config.json, attribute
assignment, forward), encoders are refused, and a config without a backbone never builds a default."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import AutoModel, BertConfig, T5Config

from llm_embed import LLMEmbeddingConfig, LLMEmbeddingModel
from llm_embed.pooling import POOLING_HEADS, PoolingHead

from .conftest import tiny_backbone_config, tiny_model

BOOLEAN_OPTIONS = ["normalize", "append_eos", "loss_symmetric", "loss_mask_duplicates", "loss_gather_across_ranks"]


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


# ----------------------------------------------------------------------------- options the head does not read


@pytest.mark.parametrize("pooling, options, unused", [
    ("mean", dict(pooling_layers=[-2, -1]), "pooling_layers"),           # "mean over the last 2 layers" is not it
    ("last_token", dict(num_latents=4, pooling_residual=True), "num_latents pooling_residual"),
    ("weighted_mean", dict(pooling_ff_mult=2.0), "pooling_ff_mult"),
    ("latent_attention", dict(pooling_layers=[1]), "pooling_layers"),
    ("mean", dict(layer_reduction="last_token"), "layer_reduction"),     # differs from the derived "mean"
])
def test_head_options_the_head_does_not_read_are_refused(pooling, options, unused):
    """Before: accepted, saved in config.json, and without effect (a mean-pooling model of the last layer)."""
    with pytest.raises(ValueError, match=f"^{unused}: not used by the {pooling} pooling head"):
        LLMEmbeddingConfig(backbone_config=tiny_backbone_config("llama"), pooling=pooling, **options)


def test_head_options_at_their_defaults_or_read_by_the_head_are_accepted():
    backbone = tiny_backbone_config("llama")
    LLMEmbeddingConfig(backbone_config=backbone, pooling="mean", num_latents=16, layer_reduction="mean")
    LLMEmbeddingConfig(backbone_config=backbone, pooling="multi_layer", pooling_layers=[1], layer_reduction="mean")
    LLMEmbeddingConfig(backbone_config=backbone, pooling="latent_attention", layer_reduction="last_token",
                       pooling_residual=True)
    with pytest.raises(ValueError, match="^layer_reduction: the latent_attention pooling head reads it only with "
                                         "pooling_residual true"):
        LLMEmbeddingConfig(backbone_config=backbone, pooling="latent_attention", layer_reduction="last_token")


def test_from_backbone_refuses_unread_head_options_before_loading_the_backbone(tmp_path):
    """from_backbone sees what was passed, so an explicit layer_reduction equal to the derived one is refused
    too; the check comes before the (possibly long) backbone load, here of a folder that does not exist."""
    with pytest.raises(ValueError, match="^layer_reduction: not used by the mean pooling head"):
        LLMEmbeddingModel.from_backbone(tmp_path / "missing", "bidirectional", "mean", layer_reduction="mean")


def test_a_saved_config_with_unread_head_options_loads_with_a_warning(tmp_path, caplog):
    """Such configs were accepted before: they still load, with a warning, and compute what they did."""
    model = tiny_model("llama", "bidirectional", "mean")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(pooling_layers=[1], num_latents=4)
    (tmp_path / "config.json").write_text(json.dumps(config))
    ids = torch.tensor([[5, 6, 7, 8]])
    with caplog.at_level("WARNING"):
        loaded = AutoModel.from_pretrained(tmp_path)
    assert "sets head options its mean pooling head does not read" in caplog.text
    assert "pooling_layers num_latents: not used by the mean pooling head" in caplog.text
    assert torch.equal(loaded(input_ids=ids).embeddings, model(input_ids=ids).embeddings)
    with pytest.raises(ValueError, match="not used by the mean pooling head"):  # only loading is lenient
        LLMEmbeddingConfig(**{key: value for key, value in config.items() if key != "model_type"})


def test_a_head_registered_without_reads_options_is_not_checked(monkeypatch):
    class Plain(PoolingHead):
        def forward(self, token_states, attention_mask, layer_states=None):
            return token_states[:, 0]

    monkeypatch.setitem(POOLING_HEADS, "plain_test", Plain)
    config = LLMEmbeddingConfig(backbone_config=tiny_backbone_config("llama"), pooling="plain_test", num_latents=4)
    assert config.num_latents == 4


@pytest.mark.parametrize("mult", [1e300, 1e18])
def test_a_feed_forward_beyond_any_tensor_is_refused_by_name(mult):
    """Before: torch's 'Overflow when unpacking long long' with a C++ stack, when the model was built."""
    expected = rf"pooling_ff_mult={re.escape(repr(mult))} makes the head's feed-forward .* units wide"
    with pytest.raises(ValueError, match=expected):
        LLMEmbeddingConfig(backbone_config=tiny_backbone_config("llama"), pooling_ff_mult=mult)


def test_a_multimodal_config_names_its_text_config():
    from transformers import Gemma3Config

    with pytest.raises(ValueError, match=r"multimodal config whose language model is its text_config \(gemma3_text\): "
                                         "pass backbone_config=config.text_config"):
        LLMEmbeddingConfig(backbone_config=Gemma3Config())


def test_options_for_head_keeps_what_each_head_reads():
    """llm-embed-study gives one set of options to five designs: --num_latents is for the trainable heads."""
    from llm_embed.configuration_llm_embed import options_for_head

    options = {"num_latents": 4, "layer_reduction": "mean", "pooling_layers": [1], "max_seq_length": 32}
    assert options_for_head("last_token", options) == {"max_seq_length": 32}
    assert options_for_head("latent_attention", options) == {"num_latents": 4, "max_seq_length": 32}
    assert options_for_head("latent_attention", {**options, "pooling_residual": True}) == {
        "num_latents": 4, "layer_reduction": "mean", "max_seq_length": 32, "pooling_residual": True}
    assert options_for_head("multi_layer", options) == options


@pytest.mark.parametrize("kwargs, hint", [
    ({"normalize_embeddings": False}, "normalize_embeddings (did you mean normalize?)"),  # sentence-transformers'
    ({"max_len": 16}, "max_len (did you mean max_seq_length?)"),
    ({"pooling_mode": "mean"}, "pooling_mode (did you mean pooling?)"),
    ({"query_prompt": "q: "}, "query_prompt (did you mean prompts={'query': ...}?)"),
    ({"foo": 1, "bar": 2}, "options foo, bar: neither"),
])
def test_an_option_under_another_name_is_refused(kwargs, hint, tmp_path):
    """These were kept as dead attributes, written into config.json, and ignored: from_backbone(...,
    normalize_embeddings=False) returned unit vectors. Refused when a config is built, and by
    from_backbone before the backbone loads (here a folder that does not exist)."""
    with pytest.raises(ValueError, match=re.escape(hint)):
        LLMEmbeddingConfig(backbone_config=tiny_backbone_config("llama"), pooling="mean", **kwargs)
    with pytest.raises(ValueError, match=re.escape(hint)):
        LLMEmbeddingModel.from_backbone(tmp_path / "missing", "bidirectional", "mean", **kwargs)


def test_transformers_config_arguments_and_a_saved_configs_keys_are_accepted(tmp_path):
    """What stays accepted: transformers' own config arguments, a config rebuilt from its to_dict(),
    and a saved config.json with a key this version does not know (written by a newer transformers,
    or added by hand), which loads as before."""
    config = LLMEmbeddingConfig(backbone_config=tiny_backbone_config("llama"), pooling="mean",
                                output_hidden_states=True, torch_dtype="float32", attn_implementation="sdpa")
    assert config.output_hidden_states
    model = tiny_model("llama", "bidirectional", "mean")
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "auto_map" in saved
    rebuilt = LLMEmbeddingConfig(**{key: value for key, value in saved.items() if key != "model_type"})
    assert rebuilt.to_dict() == model.config.to_dict() | {"auto_map": saved["auto_map"]}
    assert LLMEmbeddingConfig(**model.config.to_dict()).to_dict() == model.config.to_dict()
    (tmp_path / "config.json").write_text(json.dumps({**saved, "a_newer_transformers_key": 1}))
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.equal(AutoModel.from_pretrained(tmp_path)(input_ids=ids).embeddings, model(input_ids=ids).embeddings)


def test_a_config_edited_in_place_is_refused_by_its_own_save(tmp_path):
    """config.save_pretrained wrote configs that AutoConfig then refused to load: prompts and the
    backbone config are edited in place, past the checks of assignment. It validates first, as the
    model's save does."""
    from transformers import AutoConfig

    config = LLMEmbeddingConfig(backbone_config=tiny_backbone_config("llama"), pooling="mean",
                                default_prompt_name="query")
    config.prompts.pop("query")
    with pytest.raises(ValueError, match="default_prompt_name='query' is not in prompts"):
        config.save_pretrained(tmp_path / "a")
    config.prompts["query"] = 5
    with pytest.raises(ValueError, match="prompts must be a dict of name -> prefix string"):
        config.save_pretrained(tmp_path / "b")
    config.prompts["query"] = "q: "
    config.backbone_config.max_position_embeddings = 10
    with pytest.raises(ValueError, match="max_seq_length=512 exceeds the backbone's max_position_embeddings=10"):
        config.save_pretrained(tmp_path / "c")
    assert not any((tmp_path / name).exists() for name in "abc")
    config.backbone_config.max_position_embeddings = 512
    config.save_pretrained(tmp_path / "d")
    assert AutoConfig.from_pretrained(tmp_path / "d").prompts["query"] == "q: "


def test_pooling_layers_assigned_as_a_tuple_are_the_same_layers(tmp_path):
    """The constructor stores a tuple as a list; assignment kept the tuple, and encode and save then
    refused the model: "config.pooling_layers is (1, 2) but the model was built with [1, 2]"."""
    model = tiny_model("llama", "bidirectional", "multi_layer", pooling_layers=[1, 2])
    model.config.pooling_layers = (1, 2)
    assert model.config.pooling_layers == [1, 2]
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["pooling_layers"] == [1, 2]
