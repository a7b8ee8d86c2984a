"""The packed fast path by default (issue 13): on CUDA, ``encode`` switches an SDPA backbone to
``SDPA_WITH_FLEX`` (SDPA for tensor masks, flex attention for packed batches' BlockMasks) and packs.
Checked here on the CPU, where flex attention compiles too (slowly): the switch leaves padded
forward passes and gradients bit for bit as they were, packed output equals padded output, nothing
of it is saved, and the default selection picks it exactly on CUDA. tests/test_gpu.py repeats the
equality on a GPU."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from llm_embed import LLMEmbeddingModel
from llm_embed.packed_attention import SDPA_WITH_FLEX, enable_packed_flex, flex_attention_usable
from llm_embed.packing import resolve_packing

from .conftest import tiny_model

pytestmark = pytest.mark.skipif(not flex_attention_usable(), reason="this torch has no flex attention")

TEXTS = ["a short one", "a somewhat longer text about the weather today", "x", "the cat sat on the mat " * 3,
         "one more sentence", "and the last"]


def _model(tokenizer, attention="bidirectional", pooling="multi_layer", **kwargs):
    model = tiny_model("llama", attention, pooling, head_dim=16, **kwargs)
    model.tokenizer = tokenizer
    return model


def _padded_forward_and_grads(model):
    torch.manual_seed(0)
    ids = torch.randint(5, 1000, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    model.zero_grad()
    out = model(input_ids=ids, attention_mask=mask).embeddings
    out.sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_switch_leaves_padded_forward_and_gradients_unchanged(tokenizer, attention):
    model = _model(tokenizer, attention).train()
    before, grads_before = _padded_forward_and_grads(model)
    assert enable_packed_flex(model.backbone)
    assert model.backbone.config._attn_implementation == SDPA_WITH_FLEX
    after, grads_after = _padded_forward_and_grads(model)
    assert torch.equal(before, after)
    assert grads_before.keys() == grads_after.keys()
    assert all(torch.equal(grads_before[name], grads_after[name]) for name in grads_before)


def test_only_sdpa_backbones_that_support_flex_are_switched(tokenizer):
    eager = _model(tokenizer, attn_implementation="eager")
    assert not enable_packed_flex(eager.backbone)
    assert eager.backbone.config._attn_implementation == "eager"
    gpt2 = tiny_model("gpt2", "causal", "mean")  # transformers' GPT-2 declares no flex support
    assert not enable_packed_flex(gpt2.backbone) and gpt2.backbone.config._attn_implementation == "sdpa"
    sdpa = _model(tokenizer)
    assert enable_packed_flex(sdpa.backbone) and enable_packed_flex(sdpa.backbone)  # idempotent


def test_default_packs_through_flex_exactly_on_cuda(tokenizer):
    """resolve_packing's default: on a CUDA model it switches the backbone and packs with flex; on the
    CPU it leaves SDPA and pads. (A stand-in with device cuda: the selection, not the kernels.)"""
    model = _model(tokenizer)
    assert resolve_packing(model, None, 20) is None
    assert model.backbone.config._attn_implementation == "sdpa"
    assert resolve_packing(model, False, 20) is None
    on_cuda = SimpleNamespace(device=torch.device("cuda"), backbone=model.backbone)
    assert resolve_packing(on_cuda, None, 20) == "flex"
    assert model.backbone.config._attn_implementation == SDPA_WITH_FLEX
    assert resolve_packing(on_cuda, False, 20) is None  # packing=False still pads, through SDPA


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_packed_through_the_switch_equals_padded(tokenizer, attention, monkeypatch):
    """flex attention compiles on the CPU in this torch (tens of seconds). One piece, few shapes: on
    the CPU (torch 2.13) flex attention was seen to return NaN for some texts of later compiled shapes
    (docs/performance.md); the CPU is never switched to it by default."""
    import llm_embed.encoding

    monkeypatch.setattr(llm_embed.encoding, "FIRST_PIECE_BATCHES", 100)
    model = _model(tokenizer, attention)
    padded = model.encode(TEXTS, batch_size=2, packing=False)
    enable_packed_flex(model.backbone)
    assert resolve_packing(model, None, 20) == "flex"  # once switched, packing is the default
    packed = model.encode(TEXTS, batch_size=2)
    np.testing.assert_allclose(packed, padded, atol=1e-5)
    np.testing.assert_allclose(model.encode(TEXTS, batch_size=2, packing=False), padded, atol=0)


def test_the_switch_is_not_saved(tokenizer, tmp_path):
    model = _model(tokenizer)
    enable_packed_flex(model.backbone)
    model.save_pretrained(tmp_path)
    saved = (tmp_path / "config.json").read_text()
    assert SDPA_WITH_FLEX not in saved
    assert "_attn_implementation" not in json.loads(saved).get("backbone_config", {})
    reloaded = LLMEmbeddingModel.from_pretrained(tmp_path)
    assert reloaded.backbone.config._attn_implementation == "sdpa"
