"""Save / load round trips for every design, both AutoModel ways, and strict head loading."""

import json
import os
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

import llm_embed
from llm_embed import LLMEmbeddingModel
from llm_embed.encoding import pad_batch

from .conftest import ATTENTIONS, POOLINGS, run_without_llm_embed, tiny_model

DESIGNS = [(a, p) for a in ATTENTIONS for p in POOLINGS]


def batch():
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(5, 1000, (n,), generator=generator).tolist() for n in (9, 4, 13)]
    return pad_batch(rows, pad_id=0, padding_side="right")


def embed(model):
    input_ids, attention_mask = batch()
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask).embeddings


@pytest.fixture(scope="module")
def saved_designs(tmp_path_factory):
    """Every design saved once (non-trivial head weights), with its embeddings of the test batch."""
    root = tmp_path_factory.mktemp("designs")
    saved = {}
    for attention, pooling in DESIGNS:
        model = tiny_model("llama", attention, pooling, output_dim=16 if pooling == "weighted_mean" else None)
        with torch.no_grad():  # move head weights away from their initial values
            for name, param in model.named_parameters():
                if not name.startswith("backbone."):
                    param.add_(0.01 * torch.randn_like(param))
        folder = root / f"{attention}-{pooling}"
        model.save_pretrained(folder)
        saved[(attention, pooling)] = (folder, embed(model))
    return saved


@pytest.mark.parametrize("attention, pooling", DESIGNS)
def test_round_trip_through_automodel(saved_designs, attention, pooling):
    folder, expected = saved_designs[(attention, pooling)]
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_llm_embed.LLMEmbeddingConfig",
        "AutoModel": "modeling_llm_embed.LLMEmbeddingModel",
    }
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    model = AutoModel.from_pretrained(folder)
    assert isinstance(model, LLMEmbeddingModel)
    assert (model.config.attention, model.config.pooling) == (attention, pooling)
    assert torch.equal(embed(model), expected)


def test_remote_code_loading_without_llm_embed(saved_designs, no_llm_embed_env, tmp_path):
    """In a fresh process where ``import llm_embed`` fails, every design loads with
    trust_remote_code=True and gives identical embeddings."""
    cases = {f"{a}-{p}": str(folder) for (a, p), (folder, _) in saved_designs.items()}
    input_ids, attention_mask = batch()
    script = textwrap.dedent(f"""
        import json, sys, torch
        from transformers import AutoModel
        ids = torch.tensor({input_ids.tolist()}); mask = torch.tensor({attention_mask.tolist()})
        out = {{}}
        for name, folder in {cases!r}.items():
            model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            with torch.no_grad():
                out[name] = model(input_ids=ids, attention_mask=mask).embeddings.tolist()
        print(json.dumps(out))
    """)
    stdout = run_without_llm_embed(script, no_llm_embed_env, cwd=tmp_path)
    remote = json.loads(stdout.strip().splitlines()[-1])
    for (attention, pooling), (_, expected) in saved_designs.items():
        assert torch.equal(torch.tensor(remote[f"{attention}-{pooling}"]), expected), (attention, pooling)


def test_missing_head_weights_are_an_error(saved_designs, tmp_path):
    folder, _ = saved_designs[("bidirectional", "multi_layer")]
    for name in ("config.json", "configuration_llm_embed.py", "modeling_llm_embed.py"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    state = load_file(folder / "model.safetensors")
    del state["pooler.latents"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing_keys: \['pooler.latents'\]"):
        AutoModel.from_pretrained(tmp_path)


def test_head_saved_for_another_design_is_an_error(saved_designs, tmp_path):
    """Weights of a mean-pooling model under a config that asks for latent attention."""
    folder, _ = saved_designs[("bidirectional", "mean")]
    (tmp_path / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["pooling"] = "latent_attention"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="refusing to fill them with random values"):
        AutoModel.from_pretrained(tmp_path)


def test_mismatched_head_sizes_are_an_error(saved_designs, tmp_path):
    folder, _ = saved_designs[("causal", "latent_attention")]
    (tmp_path / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["num_latents"] = 5
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"mismatched_keys: \['pooler.latents'\]"):
        AutoModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="pooler.latents"):  # asking to ignore it does not make it silent
        AutoModel.from_pretrained(tmp_path, ignore_mismatched_sizes=True)


def test_dtype_device_map_and_attn_implementation_pass_through(saved_designs):
    folder, expected = saved_designs[("bidirectional", "multi_layer")]
    model = AutoModel.from_pretrained(folder, dtype=torch.bfloat16, attn_implementation="eager", device_map="auto")
    assert model.backbone.config._attn_implementation == "eager"
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.backbone.layers[0].self_attn.is_causal is False
    out = embed(model).float()
    assert torch.nn.functional.cosine_similarity(out, expected).min() > 0.99


def test_output_loading_info_still_available(saved_designs):
    folder, _ = saved_designs[("causal", "mean")]
    model, info = LLMEmbeddingModel.from_pretrained(folder, output_loading_info=True)
    assert isinstance(model, LLMEmbeddingModel)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_checkpoint_without_tokenizer_loads_saves_and_says_why_it_cannot_encode(saved_designs, tmp_path):
    folder, expected = saved_designs[("causal", "mean")]
    model = AutoModel.from_pretrained(folder)  # saved from a config-built model: no tokenizer files
    model.save_pretrained(tmp_path)
    assert torch.equal(embed(AutoModel.from_pretrained(tmp_path)), expected)
    with pytest.raises(ValueError, match="no tokenizer"):
        model.encode("hello")


def test_unreachable_hub_id_reports_the_connection_not_a_missing_config(tmp_path, monkeypatch):
    """Offline (or no network) and the repo not cached: transformers' connection error, not
    "holds no config.json, so it is not a saved llm_embed model"."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="couldn't connect") as caught:
        LLMEmbeddingModel.from_pretrained("acme/my-embedder", cache_dir=str(tmp_path))
    assert "holds no config.json" not in str(caught.value)
    # the name may be a mistyped local path: the message says no such folder exists either
    assert f"No local folder {os.path.abspath('acme/my-embedder')} exists either" in str(caught.value)


def test_plain_decoder_folder_points_to_from_backbone(tiny_backbone_dir):
    with pytest.raises(ValueError, match=r"holds a plain llama model .*LLMEmbeddingModel\.from_backbone"):
        LLMEmbeddingModel.from_pretrained(tiny_backbone_dir)


def test_folder_without_config_is_still_refused(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(OSError, match="holds no config.json"):
        LLMEmbeddingModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("path", ["/nope/model", "./typo", "out/typo", "out/typo/", "a/b/c"])
def test_missing_local_folder_says_so(tmp_path, monkeypatch, path):
    """Not transformers' "Repo id must be in the form ..." nor a wait for the network."""
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LLMEmbeddingModel.from_pretrained(path)


def test_a_home_relative_path_is_expanded(tmp_path, monkeypatch, tokenizer):
    """``from_pretrained("~/models/x")`` said the folder <cwd>/~/models/x does not exist (before)."""
    model = tiny_model("llama", "causal", "mean")
    model.tokenizer = tokenizer
    model.save_pretrained(tmp_path / "models" / "x")
    monkeypatch.setenv("HOME", str(tmp_path))
    loaded = LLMEmbeddingModel.from_pretrained("~/models/x")
    assert torch.equal(loaded.encode(["a b"], convert_to_tensor=True), model.encode(["a b"], convert_to_tensor=True))


# ----------------------------------------------------------------------------------------------
# Backbones read from a GGUF file: their weights are floats, so nothing may flag them as quantized

GGUF_RECORD = {"quant_method": "gguf", "dequantize": False, "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


def assert_not_quantized(model) -> None:
    assert not getattr(model, "is_quantized", False) and getattr(model, "hf_quantizer", None) is None


def test_a_checkpoint_saved_with_a_gguf_load_record_saves_and_trains_again(tmp_path, tokenizer):
    """Checkpoints built on the bundled SmolLM2 carried its GGUF ``quantization_config`` in
    ``backbone_config``: transformers >= 5.2x flagged every reload as quantized with GGUF, which refused
    ``save_pretrained`` ("not serializable"), ``.half()`` and the Trainer."""
    from transformers import Trainer, TrainingArguments

    model = tiny_model("llama", "causal", "mean")
    model.tokenizer = tokenizer
    model.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    config["backbone_config"]["quantization_config"] = GGUF_RECORD  # as such checkpoints were written
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))

    reloaded = AutoModel.from_pretrained(tmp_path / "old")
    assert_not_quantized(reloaded)
    assert "quantization_config" not in reloaded.config.backbone_config.to_dict()
    texts = ["a card was lost", "branches open at nine"]
    torch.testing.assert_close(torch.from_numpy(reloaded.encode(texts)), torch.from_numpy(model.encode(texts)),
                               rtol=0, atol=0)
    reloaded.save_pretrained(tmp_path / "again")
    assert "quantization_config" not in json.loads((tmp_path / "again" / "config.json").read_text())["backbone_config"]
    Trainer(model=reloaded, args=TrainingArguments(str(tmp_path / "train"), report_to=[], use_cpu=True))
    reloaded.half()


def test_from_backbone_drops_a_gguf_load_record(tmp_path, tokenizer):
    """A decoder folder converted from a GGUF (as the bundled cache was) keeps the record in its config.json:
    the backbone loaded from it was flagged quantized, and the record went into the embedding model's config."""
    from transformers import AutoConfig, LlamaModel

    from .conftest import tiny_backbone_config

    torch.manual_seed(0)
    LlamaModel(tiny_backbone_config("llama")).save_pretrained(tmp_path / "decoder")
    tokenizer.save_pretrained(tmp_path / "decoder")
    config = json.loads((tmp_path / "decoder" / "config.json").read_text())
    (tmp_path / "decoder" / "config.json").write_text(json.dumps({**config, "quantization_config": GGUF_RECORD}))

    model = LLMEmbeddingModel.from_backbone(tmp_path / "decoder", attention="causal", pooling="mean")
    assert_not_quantized(model.backbone)
    assert not hasattr(model.backbone.config, "quantization_config")
    assert "quantization_config" not in model.config.backbone_config.to_dict()
    model.save_pretrained(tmp_path / "model")
    assert_not_quantized(AutoModel.from_pretrained(tmp_path / "model"))

    given = AutoConfig.from_pretrained(tmp_path / "decoder")  # a config object: the caller's is left as it was
    built = LLMEmbeddingModel(llm_embed.LLMEmbeddingConfig(backbone_config=given, attention="causal", pooling="mean"))
    assert "quantization_config" not in built.config.backbone_config.to_dict()
    assert given.to_dict()["quantization_config"]["quant_method"] == "gguf"


def test_the_bundled_cache_drops_the_gguf_load_record_it_was_converted_with(tmp_path):
    from llm_embed.bundled import TOKENIZER_FORMAT, TOKENIZER_RECORD, smollm2_backbone_path

    folder = tmp_path / "SmolLM2-135M-Instruct"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")  # a converted folder, as far as the check looks
    (folder / TOKENIZER_RECORD).write_text(json.dumps({"format": TOKENIZER_FORMAT}))  # its tokenizer is current
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 576,
                                                    "quantization_config": GGUF_RECORD}))
    assert smollm2_backbone_path(tmp_path) == folder
    assert json.loads((folder / "config.json").read_text()) == {"model_type": "llama", "hidden_size": 576}
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", TOKENIZER_RECORD, "model.safetensors"]


def test_a_design_option_given_at_load_is_said_and_named_in_a_refusal(tmp_path, caplog):
    """``AutoModel.from_pretrained(folder, attention="causal")`` loaded a bidirectional checkpoint as causal
    (vectors off by 0.18) without a word; a trainable head asked for over a parameter-free one was refused
    as if the checkpoint were broken."""
    model = tiny_model("llama", "bidirectional", "mean")
    model.save_pretrained(tmp_path)
    with caplog.at_level("WARNING", logger="llm_embed.modeling_llm_embed"):
        loaded = AutoModel.from_pretrained(tmp_path, attention="causal")
    assert loaded.config.attention == "causal"  # transformers' rule: the keyword argument wins
    assert "was given attention='causal' (saved: 'bidirectional'): the model computes other vectors" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="llm_embed.modeling_llm_embed"):
        LLMEmbeddingModel.from_pretrained(tmp_path, pooling="last_token")
        AutoModel.from_pretrained(tmp_path, normalize=False, attention="bidirectional")  # not a design change
    assert caplog.text.count("computes other vectors") == 1 and "pooling='last_token' (saved: 'mean')" in caplog.text
    with pytest.raises(ValueError, match=r"missing_keys.*from_pretrained was given pooling='latent_attention' "
                                         r"\(saved: 'mean'\): leave these out"):
        AutoModel.from_pretrained(tmp_path, pooling="latent_attention")


def test_a_misspelled_option_at_load_is_named_with_the_closest_option(tmp_path):
    """``AutoModel.from_pretrained(folder, num_latent=8)`` failed with ``__init__() got an unexpected keyword
    argument 'num_latent'``; ``from_backbone`` and the config already suggested the option meant."""
    tiny_model("llama", "bidirectional", "latent_attention").save_pretrained(tmp_path)
    with pytest.raises(TypeError, match=r"unknown arguments num_latent \(did you mean 'num_latents'\?\)"):
        AutoModel.from_pretrained(tmp_path, num_latent=8)
    with pytest.raises(TypeError, match=r"unknown arguments colour: neither LLMEmbeddingConfig options"):
        LLMEmbeddingModel.from_pretrained(tmp_path, colour="red")


def test_save_pretrained_refuses_arguments_it_would_ignore(tmp_path):
    """transformers' save_pretrained(**kwargs) takes anything and reads it only for push_to_hub, so a
    misspelled argument saved with the default (varient="v1" wrote an unvariant model.safetensors) and
    safe_serialization=False saved safetensors, which push_to_hub refused. Nothing is written."""
    model = tiny_model("llama", "bidirectional", "mean")
    with pytest.raises(TypeError, match=r"unknown arguments varient \(did you mean 'variant'\?\)"):
        model.save_pretrained(tmp_path / "m", varient="v1")
    with pytest.raises(TypeError, match=r"unknown arguments max_shard_sise \(did you mean 'max_shard_size'\?\)"):
        model.save_pretrained(tmp_path / "m", max_shard_sise="100KB")
    with pytest.raises(TypeError, match=r"got commit_message without push_to_hub=True: it is only read for the "
                                        r"push"):
        model.save_pretrained(tmp_path / "m", commit_message="first")
    with pytest.raises(ValueError, match="safetensors only; safe_serialization=False"):
        model.save_pretrained(tmp_path / "m", safe_serialization=False)
    assert not (tmp_path / "m").exists()
    model.save_pretrained(tmp_path / "m", safe_serialization=True, variant="v1")
    assert (tmp_path / "m" / "model.v1.safetensors").is_file()


def _decoder_folder(folder, tokenizer, arch="llama"):
    from transformers import AutoModelForCausalLM

    from .conftest import tiny_backbone_config

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_backbone_config(arch)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_from_backbone_refuses_a_checkpoint_with_missing_weights(tmp_path, tokenizer):
    """transformers fills a missing or renamed weight randomly and only prints a load report: a
    checkpoint whose keys carry a wrapper's prefix loaded with every decoder weight random."""
    folder = _decoder_folder(tmp_path / "decoder", tokenizer)
    weights = load_file(folder / "model.safetensors")
    LLMEmbeddingModel.from_backbone(folder, attention="causal", pooling="mean")  # complete (an LM head beside): loads
    del weights["model.layers.1.mlp.down_proj.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"1 missing keys \(layers\.1\.mlp\.down_proj\.weight\).*randomly"):
        LLMEmbeddingModel.from_backbone(folder, attention="causal", pooling="mean")
    save_file({"base_model.model." + key: value for key, value in weights.items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing keys .*prefix such as base_model\.model\."):
        LLMEmbeddingModel.from_backbone(folder, attention="causal", pooling="mean")
    with pytest.raises(TypeError, match="output_loading_info"):
        LLMEmbeddingModel.from_backbone(folder, pooling="mean", backbone_kwargs={"output_loading_info": True})


def test_from_backbone_on_a_saved_embedding_model_points_to_from_pretrained(tmp_path):
    """It was refused after loading as "not a decoder LM", with a hint for encoders such as BERT."""
    tiny_model("llama", "causal", "mean").save_pretrained(tmp_path / "embedder")
    with pytest.raises(ValueError, match=r"holds a saved llm_embed model.*AutoModel\.from_pretrained"):
        LLMEmbeddingModel.from_backbone(tmp_path / "embedder", pooling="mean")


def test_from_backbone_takes_torch_dtype_and_a_tokenizer_path_and_refuses_a_tokenizer_too_large(tmp_path, tokenizer):
    """torch_dtype= (transformers 4's name) was stored as a config value while the weights stayed float32;
    tokenizer="folder" failed with "'str' object has no attribute 'pad_token'"; a tokenizer with more ids
    than embedding rows built, then encode failed with a bare IndexError."""
    folder = _decoder_folder(tmp_path / "decoder", tokenizer)
    model = LLMEmbeddingModel.from_backbone(folder, attention="causal", pooling="mean", torch_dtype=torch.bfloat16,
                                            tokenizer=str(folder))
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}
    assert model.tokenizer("a b")["input_ids"] == tokenizer("a b")["input_ids"] + [tokenizer.eos_token_id]
    with pytest.raises(TypeError, match="dtype and torch_dtype"):
        LLMEmbeddingModel.from_backbone(folder, pooling="mean", dtype=torch.float32, torch_dtype=torch.bfloat16)
    from transformers import AutoTokenizer

    grown = AutoTokenizer.from_pretrained(folder)
    grown.add_tokens(["<new-token>"])
    with pytest.raises(ValueError, match=rf"{len(grown)} tokens and the backbone's embedding matrix {len(tokenizer)} "
                                         r"rows.*resize_token_embeddings"):
        LLMEmbeddingModel.from_backbone(folder, pooling="mean", tokenizer=grown)
