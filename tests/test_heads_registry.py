"""The pooling registry's entries own their behaviour (forward, initialisation, model-card rows), the
heads' module has no dependency on the config class, decoder layers are found through transformers'
declarations, and GradCache's random-state replay leaves the caller's generators alone."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from llm_embed import LLMEmbeddingConfig, LLMEmbeddingModel, pooling
from llm_embed.contrastive import InfoNCELoss, accelerator_devices, cached_contrastive_loss
from llm_embed.layer_states import find_decoder_layers
from llm_embed.model_card import render_model_card
from llm_embed.pooling import (
    POOLING_HEADS,
    CrossAttentionPoolingHead,
    LatentAttentionPooling,
    MultiLayerPooling,
    PoolingHead,
    register_pooling_head,
)

from .conftest import ARCHS, POOLINGS, tiny_backbone_config, tiny_model

TRAINABLE = ["latent_attention", "multi_layer"]
OTHER_OPTIONS = dict(output_dim=16, initializer_range=0.1)
MULTI_LAYER_OPTIONS = dict(pooling_layers=[1, 3], layer_reduction="last_token")


def options(pooling_name: str, extra: bool) -> dict:
    if not extra:
        return {}
    return dict(OTHER_OPTIONS, **(MULTI_LAYER_OPTIONS if pooling_name == "multi_layer" else {}))


# ----------------------------------------------------------------------------- initialisation


class OldInitModel(LLMEmbeddingModel):
    """The model with ``_init_weights`` as it was before the heads owned their initialisation
    (isinstance tests on the head classes)."""

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, CrossAttentionPoolingHead):
            init.normal_(module.latents, mean=0.0, std=std)
        if isinstance(module, MultiLayerPooling):
            init.normal_(module.layer_embedding, mean=0.0, std=std)
        if isinstance(module, (nn.Linear, nn.LayerNorm)):
            PreTrainedModel._init_weights(self, module)


def build(cls, arch, pooling_name, seed, **kwargs):
    # The isinstance version predates pooling_residual (whose zeroed projections tests/test_head_baseline.py
    # checks): compare the head as it was then.
    kwargs.setdefault("pooling_residual", False)
    torch.manual_seed(seed)
    config = LLMEmbeddingConfig(backbone_config=tiny_backbone_config(arch), attention="bidirectional",
                                pooling=pooling_name, **kwargs)
    return cls(config)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("pooling_name", POOLINGS)
@pytest.mark.parametrize("extra", [False, True])
def test_initialisation_is_bit_identical_to_the_isinstance_version(arch, pooling_name, extra):
    kwargs = options(pooling_name, extra)
    new = build(LLMEmbeddingModel, arch, pooling_name, 5, **kwargs)
    new_rng = torch.get_rng_state()
    old = build(OldInitModel, arch, pooling_name, 5, **kwargs)
    old_rng = torch.get_rng_state()
    new_state, old_state = new.state_dict(), old.state_dict()
    assert new_state.keys() == old_state.keys()
    for key in new_state:
        assert torch.equal(new_state[key], old_state[key]), key
    assert torch.equal(new_rng, old_rng)  # the same number of draws, in the same order


def _digest(model, backbone: bool) -> str:
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        if key.startswith("backbone.") == backbone:
            digest.update(key.encode())
            digest.update(value.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


# Recorded with the code before the heads owned their initialisation (tiny_model("llama", seed=3);
# the same on transformers 5.2.0 and 5.24.0, torch 2.13 CPU).
BACKBONE_DIGEST = "141609ad872efd85"
HEAD_DIGESTS = {
    ("latent_attention", False): "b4dec7bb3973c6b83ebe259699d9a8a079dac4225fe6df03248834b16542822e",
    ("multi_layer", False): "55a7b27323e972f3989daa7b90bebfc16eac1c1736ba9fa99aeb6ee3f4ff44d5",
    ("multi_layer", True): "9514b1b8faba07a29402ad8180f7afb40d6db692c01ed1594731da5900f581e4",
}


@pytest.mark.parametrize(("pooling_name", "extra"), list(HEAD_DIGESTS))
def test_initialisation_matches_the_snapshot_taken_before_the_change(pooling_name, extra):
    model = tiny_model("llama", "bidirectional", pooling_name, seed=3, pooling_residual=False,
                       **options(pooling_name, extra))
    if _digest(model, backbone=True)[:16] != BACKBONE_DIGEST:
        pytest.skip("this torch/transformers initialises the Llama backbone differently "
                    "from where the snapshot was taken")
    assert _digest(model, backbone=False) == HEAD_DIGESTS[pooling_name, extra]


@pytest.mark.parametrize("pooling_name", POOLINGS)
def test_each_head_is_initialised_once(monkeypatch, pooling_name):
    head_class = POOLING_HEADS[pooling_name]
    original = head_class.init_weights
    calls = []

    def counted(self, std):
        calls.append(std)
        return original(self, std)

    monkeypatch.setattr(head_class, "init_weights", counted)
    model = tiny_model("llama", "causal", pooling_name, initializer_range=0.3)
    # a head without parameters of its own: transformers 5.24 skips it (custom code), 5.2 calls it
    expected = [0.3] if list(model.pooler.parameters(recurse=False)) else calls
    assert calls == expected and len(calls) <= 1
    before = {key: value.clone() for key, value in model.state_dict().items()}
    model.initialize_weights()  # another pass (as from_pretrained runs one) leaves initialised modules alone
    assert calls == expected
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("pooling_name", TRAINABLE)
def test_initializer_range_scales_the_head(pooling_name):
    small = tiny_model("llama", "causal", pooling_name, seed=1, initializer_range=0.02)
    large = tiny_model("llama", "causal", pooling_name, seed=1, initializer_range=0.5)
    names = ["latents", "cross_attention.to_q.weight"] + (["layer_embedding"] if pooling_name == "multi_layer" else [])
    for name in names:
        a, b = small.pooler.get_parameter(name), large.pooler.get_parameter(name)
        assert torch.allclose(a / 0.02, b / 0.5, rtol=1e-5, atol=1e-6), name
    assert torch.equal(large.pooler.cross_attention.norm_queries.weight, torch.ones(32))


@pytest.mark.parametrize("pooling_name", TRAINABLE)
def test_from_pretrained_keeps_the_saved_head(tmp_path, pooling_name):
    model = tiny_model("llama", "bidirectional", pooling_name, seed=2, output_dim=8)
    model.save_pretrained(tmp_path)
    torch.manual_seed(1234)
    loaded = LLMEmbeddingModel.from_pretrained(tmp_path)
    saved, reloaded = model.state_dict(), loaded.state_dict()
    assert saved.keys() == reloaded.keys()
    for key in saved:
        assert torch.equal(saved[key], reloaded[key]), key


# ----------------------------------------------------------------------------- the registry's classes


def test_forward_is_abstract():
    config = LLMEmbeddingConfig(backbone_config=tiny_backbone_config("llama"), pooling="mean")
    with pytest.raises(TypeError, match="abstract"):
        PoolingHead(config)

    class NoForward(PoolingHead):
        pass

    with pytest.raises(TypeError, match="forward"):
        NoForward(config)


def test_cross_attention_base_is_renamed_and_not_registered():
    assert not hasattr(pooling, "LatentCrossAttentionPooling")
    assert issubclass(LatentAttentionPooling, CrossAttentionPoolingHead)
    assert issubclass(MultiLayerPooling, CrossAttentionPoolingHead)
    assert CrossAttentionPoolingHead not in POOLING_HEADS.values()
    assert POOLING_HEADS["latent_attention"] is LatentAttentionPooling


HEAD_KEYS = [
    "latents", "cross_attention.norm_queries.weight", "cross_attention.norm_queries.bias",
    "cross_attention.norm_context.weight", "cross_attention.norm_context.bias", "cross_attention.to_q.weight",
    "cross_attention.to_kv.weight", "cross_attention.to_out.weight", "feed_forward.norm.weight",
    "feed_forward.norm.bias", "feed_forward.proj_in.weight", "feed_forward.proj_in.bias",
    "feed_forward.proj_out.weight", "feed_forward.proj_out.bias",
]


@pytest.mark.parametrize("pooling_name", TRAINABLE)
def test_checkpoint_keys_are_unchanged(pooling_name):
    model = tiny_model("llama", "causal", pooling_name)
    expected = ["pooler." + key for key in HEAD_KEYS[:1]
                + (["layer_embedding"] if pooling_name == "multi_layer" else []) + HEAD_KEYS[1:]]
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items() if key.startswith("pooler.")}
    assert list(shapes) == expected
    assert shapes["pooler.latents"] == (16, 32) and shapes["pooler.cross_attention.to_kv.weight"] == (1024, 32)


def test_pooling_module_does_not_import_the_config():
    source = Path(pooling.__file__).read_text()
    imported = [node.module or "" for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Import)
                 for alias in node.names]
    assert not [name for name in imported if "configuration" in name], imported
    assert "TYPE_CHECKING" not in source


def old_card_rows(config, parameters):
    """The head-specific design rows as the card wrote them before the heads owned them."""
    rows = []
    if config.pooling in ("latent_attention", "multi_layer"):
        rows.append(("pooling head", f"{config.num_latents} latents, {config.pooling_heads} heads x "
                                     f"{config.pooling_head_dim}, feed-forward x{config.pooling_ff_mult}, "
                                     f"{parameters:,} parameters"))
    if config.pooling == "multi_layer":
        layers = "all" if config.pooling_layers is None else ", ".join(map(str, config.pooling_layers))
        rows.append(("pooled layers", f"{layers} (per-layer {config.layer_reduction})"))
    return rows


@pytest.mark.parametrize("pooling_name", POOLINGS)
@pytest.mark.parametrize("extra", [False, True])
def test_card_rows_are_the_heads_and_unchanged(pooling_name, extra):
    model = tiny_model("gpt2", "causal", pooling_name, **options(pooling_name, extra))
    parameters = sum(p.numel() for p in model.pooler.parameters())  # the head's own (the projection has a row)
    rows = model.pooler.card_rows(model.config, parameters)
    start = [value for key, value in rows if key == "pooling head at initialisation"]  # added with pooling_residual
    assert start == (["random (the paper's head, pooling_residual=false)"] if pooling_name in TRAINABLE else [])
    assert [row for row in rows if row[0] != "pooling head at initialisation"] == old_card_rows(model.config,
                                                                                               parameters)
    card = render_model_card(model)
    table = card[card.index("| design | value |"):card.index("## Usage")]
    expected = [f"| pooling | {pooling_name} |"] + [f"| {key} | {value} |" for key, value in rows]
    if model.projection is not None:
        expected.append(f"| output projection | linear 32 -> 16, {32 * 16 + 16:,} parameters |")
    expected.append(f"| embedding dimension | {model.config.embedding_dim} |")
    assert "\n".join(expected) in table


def test_a_registered_head_brings_its_own_init_and_card_rows(monkeypatch):
    class ScaledMean(PoolingHead):
        def __init__(self, config):
            super().__init__(config)
            self.scale = nn.Parameter(torch.empty(config.backbone_hidden_size))

        def init_weights(self, std):
            nn.init.constant_(self.scale, 1.0 + std)

        def card_rows(self, config, parameters):
            return [("scale", f"{parameters} parameters")]

        def forward(self, token_states, attention_mask, layer_states=None):
            return pooling.masked_mean(token_states, attention_mask) * self.scale

    monkeypatch.setitem(POOLING_HEADS, "scaled_mean_test", ScaledMean)  # removed again after the test
    monkeypatch.setattr(ScaledMean, "name", "scaled_mean_test")
    model = tiny_model("llama", "causal", "scaled_mean_test", initializer_range=0.25)
    assert torch.equal(model.pooler.scale, torch.full((32,), 1.25))
    assert "| pooling | scaled_mean_test |\n| scale | 32 parameters |" in render_model_card(model)
    with pytest.raises(ValueError, match="already registered"):
        register_pooling_head("scaled_mean_test")(ScaledMean)


def test_registering_a_head_wrongly_is_refused_at_the_decorator():
    """Each misuse used to register nothing (or a head the config then failed on with an
    AttributeError), found only later as "pooling must be one of ..."."""

    class FirstToken(PoolingHead):
        def forward(self, token_states, attention_mask, layer_states=None):
            return token_states[:, 0]

    with pytest.raises(TypeError, match=r'@register_pooling_head\("my_head"\)'):
        register_pooling_head(FirstToken)  # the decorator without its name
    with pytest.raises(TypeError, match="non-empty string"):
        register_pooling_head(3)
    with pytest.raises(TypeError, match="subclass of llm_embed.PoolingHead"):
        register_pooling_head("plain_module_test")(nn.Linear)
    assert not {"plain_module_test", 3} & set(POOLING_HEADS)


def test_a_head_returning_another_width_is_refused(monkeypatch):
    """A user head returning (B, 5) from a backbone of width 32 gave vectors of 5 while the config's
    embedding_dim said 32 (and a projection would fail with a bare matmul error)."""

    class Narrow(PoolingHead):
        def forward(self, token_states, attention_mask, layer_states=None):
            return token_states[:, 0, :5]

    monkeypatch.setitem(POOLING_HEADS, "narrow_test", Narrow)
    monkeypatch.setattr(Narrow, "name", "narrow_test")
    model = tiny_model("llama", "causal", "narrow_test")
    with pytest.raises(ValueError, match=r"returned shape \(1, 5\) for 1 texts; a head returns \(batch, 32\)"):
        model(input_ids=torch.tensor([[5, 6, 7]]))


# ----------------------------------------------------------------------------- decoder layers


@pytest.mark.parametrize("arch", ARCHS)
def test_decoder_layers_found_through_declarations(arch):
    model = tiny_model(arch, "causal", "multi_layer")
    backbone = model.backbone
    layers = find_decoder_layers(backbone, 3)
    assert layers is (backbone.h if arch == "gpt2" else backbone.layers)
    declared = (getattr(backbone, "_can_record_outputs", None) or {}).get("hidden_states")
    if declared is not None:  # not declared for GPT-2 on transformers 5.2
        assert all(isinstance(layer, declared) for layer in layers)
    assert {type(layer).__name__ for layer in layers} <= set(backbone._no_split_modules)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_declarations_resolve_what_the_length_heuristic_cannot(arch):
    model = tiny_model(arch, "causal", "mean")
    backbone = model.backbone
    backbone.extra = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])  # another ModuleList of length L
    assert find_decoder_layers(backbone, 3) is (backbone.h if arch == "gpt2" else backbone.layers)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)


class Undeclared(nn.Module):
    def __init__(self, lists: int = 2):
        super().__init__()
        for index in range(lists):
            setattr(self, f"blocks{index}", nn.ModuleList([Block() for _ in range(3)]))


def test_backbone_without_declarations_gets_a_clear_error():
    with pytest.raises(ValueError) as error:
        find_decoder_layers(Undeclared(), 3)
    message = str(error.value)
    for part in ("Undeclared", "3 decoder layers", "_can_record_outputs['hidden_states']: not declared",
                 "_no_split_modules: not declared", "found 2 (blocks0, blocks1)"):
        assert part in message, message


def test_backbone_without_declarations_falls_back_to_the_only_list():
    backbone = Undeclared(lists=1)
    assert find_decoder_layers(backbone, 3) is backbone.blocks0
    with pytest.raises(ValueError, match="4 decoder layers of Undeclared"):
        find_decoder_layers(backbone, 4)


def test_declared_layer_class_picks_among_several_lists():
    from transformers.utils.output_capturing import OutputRecorder

    class Decoy(nn.Module):
        pass

    class ByRecorder(nn.Module):
        _can_record_outputs = {"hidden_states": OutputRecorder(Block, index=0)}

        def __init__(self):
            super().__init__()
            self.decoys = nn.ModuleList([Decoy() for _ in range(3)])
            self.blocks = nn.ModuleList([Block() for _ in range(3)])

    class ByNoSplit(ByRecorder):
        _can_record_outputs = None
        _no_split_modules = ["Block"]

    for cls in (ByRecorder, ByNoSplit):
        backbone = cls()
        assert find_decoder_layers(backbone, 3) is backbone.blocks, cls


# ----------------------------------------------------------------------------- GradCache random state


def dropout_embed(weights: torch.Tensor, fail_on_call: int | None = None):
    """A tiny embedder that draws from the CPU generator (dropout) on every call."""
    calls = []

    def embed(ids, mask):
        calls.append(len(ids))
        if fail_on_call is not None and len(calls) == fail_on_call:
            raise RuntimeError("mini-batch failed")
        states = F.dropout(weights[ids], p=0.3, training=True)
        return pooling.masked_mean(states, mask)

    return embed, calls


def inputs(seed=0, b=6, k=1):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 50, (b, 5), generator=generator)
    d = torch.randint(0, 50, (b * (1 + k), 7), generator=generator)
    return (q, torch.ones_like(q)), (d, torch.ones_like(d))


def test_cached_step_advances_the_callers_generator_like_its_plain_forward():
    weights = torch.randn(50, 8, requires_grad=True)
    queries, documents = inputs()
    embed, calls = dropout_embed(weights)
    torch.manual_seed(7)
    start = torch.get_rng_state()
    loss, _ = cached_contrastive_loss(embed, InfoNCELoss(0.1), queries, documents, mini_batch_size=4)
    after_forward = torch.get_rng_state()
    loss.backward()
    assert len(calls) == 2 * 5  # first pass and replay: 2 query + 3 document mini-batches each
    assert torch.equal(torch.get_rng_state(), after_forward)  # the replay draws nothing of the caller's
    assert not torch.equal(after_forward, start)  # dropout did draw
    # ... and the first pass draws exactly what the same mini-batch forwards draw
    torch.manual_seed(7)
    with torch.no_grad():
        for ids, mask in (queries, documents):
            for first in range(0, len(ids), 4):
                embed(ids[first:first + 4], mask[first:first + 4])
    assert torch.equal(torch.get_rng_state(), after_forward)


def test_failed_mini_batch_restores_the_callers_generator():
    weights = torch.randn(50, 8, requires_grad=True)
    queries, documents = inputs()
    embed, calls = dropout_embed(weights, fail_on_call=5 + 2)  # the second mini-batch of the replay
    torch.manual_seed(7)
    loss, _ = cached_contrastive_loss(embed, InfoNCELoss(0.1), queries, documents, mini_batch_size=4)
    before = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="mini-batch failed"):
        loss.backward()
    assert torch.equal(torch.get_rng_state(), before)


def test_replayed_dropout_gives_the_uncached_gradients():
    queries, documents = inputs(seed=3)
    weights = torch.randn(50, 8, requires_grad=True)
    embed, _ = dropout_embed(weights)
    torch.manual_seed(11)
    loss, _ = cached_contrastive_loss(embed, InfoNCELoss(0.1), queries, documents, mini_batch_size=4)
    loss.backward()
    cached_grad, weights.grad = weights.grad.clone(), None
    # reference: the same mini-batch forwards in the same order (same dropout masks), with a graph
    torch.manual_seed(11)
    parts = {0: [], 1: []}
    for which, (ids, mask) in enumerate((queries, documents)):
        for first in range(0, len(ids), 4):
            parts[which].append(embed(ids[first:first + 4], mask[first:first + 4]))
    reference = InfoNCELoss(0.1)(torch.cat(parts[0]), torch.cat(parts[1]))
    reference.backward()
    assert torch.allclose(loss, reference, atol=1e-6)
    assert torch.allclose(cached_grad, weights.grad, atol=1e-6)


def test_accelerator_devices_groups_what_is_in_use():
    assert accelerator_devices([torch.device("cpu"), "cpu", "meta"]) == {}
    assert accelerator_devices(["cuda:1", torch.device("cuda", 1), "cuda:0"]) == {"cuda": [1, 0]}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_failed_mini_batch_restores_the_callers_cuda_generator():
    weights = torch.randn(50, 8, device="cuda", requires_grad=True)
    queries, documents = (tuple(tensor.cuda() for tensor in pair) for pair in inputs())
    embed, _ = dropout_embed(weights, fail_on_call=5 + 2)
    torch.manual_seed(7)
    loss, _ = cached_contrastive_loss(embed, InfoNCELoss(0.1), queries, documents, mini_batch_size=4)
    before = torch.cuda.get_rng_state()
    with pytest.raises(RuntimeError, match="mini-batch failed"):
        loss.backward()
    assert torch.equal(torch.cuda.get_rng_state(), before)
