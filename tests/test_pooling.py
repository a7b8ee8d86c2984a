"""Every pooling head x attention mode: padding masked, left = right padding, batch invariance."""

import pytest
import torch

from llm_embed.encoding import pad_batch
from llm_embed.pooling import last_token, masked_mean, position_weighted_mean

from .conftest import ATTENTIONS, POOLINGS, tiny_model

TOLERANCE = 1e-5


def enable_checkpointing(model, kwargs=None):
    """``activation_checkpointing_enable`` (transformers >= 5.2x) or its older name."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable(kwargs)


def embed(model, rows, padding_side):
    input_ids, attention_mask = pad_batch(rows, pad_id=0, padding_side=padding_side)
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask).embeddings


def random_rows(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 1000, (n,), generator=generator).tolist() for n in lengths]


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batch_invariance(arch, pooling, attention):
    model = tiny_model(arch, attention, pooling, output_dim=24 if pooling == "mean" else None)
    short = random_rows([5])[0]
    others = random_rows([40, 3, 57], seed=1)
    alone = embed(model, [short], "right")[0]
    for side in ("left", "right"):
        in_batch = embed(model, others[:1] + [short] + others[1:], side)[1]
        assert (alone - in_batch).abs().max() <= TOLERANCE, (side, (alone - in_batch).abs().max())
    # the neighbours themselves agree between left and right padding
    left, right = embed(model, others, "left"), embed(model, others, "right")
    assert (left - right).abs().max() <= TOLERANCE


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_trainable_heads_see_only_real_tokens(attention):
    """Changing what sits under padding changes nothing (the reference code's missing mask)."""
    model = tiny_model("llama", attention, "latent_attention")
    input_ids, attention_mask = pad_batch(random_rows([4, 9]), pad_id=0, padding_side="right")
    other = input_ids.clone()
    other[0, 4:] = 123
    with torch.no_grad():
        a = model(input_ids=input_ids, attention_mask=attention_mask).embeddings
        b = model(input_ids=other, attention_mask=attention_mask).embeddings
    assert torch.allclose(a, b, atol=TOLERANCE)


def test_reductions_by_hand():
    states = torch.arange(24, dtype=torch.float32).reshape(2, 4, 3)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    assert torch.equal(last_token(states, right)[0], states[0, 2])
    assert torch.equal(last_token(states, left)[0], states[0, 3])
    assert torch.allclose(masked_mean(states, right)[0], states[0, :3].mean(0))
    expected = (states[0, 1] * 1 + states[0, 2] * 2 + states[0, 3] * 3) / 6
    assert torch.allclose(position_weighted_mean(states, left)[0], expected)
    # a non-finite value under padding must not leak
    states[0, 3] = float("nan")
    assert torch.isfinite(masked_mean(states, right)).all()
    assert torch.isfinite(position_weighted_mean(states, right)).all()


def test_reductions_do_not_overflow_in_float16():
    """A float16 mean whose value fits is finite: the sums run in float32 (a sum of 400 states of 200,
    and the weights 1 + ... + n past n = 361, overflowed 65504 and gave inf / NaN / zero vectors)."""
    from llm_embed.pooling import MeanReduction

    mask = torch.ones(2, 400)
    mask[1, :150] = 0  # left padding: 250 real tokens
    states = (200 + torch.randn(2, 400, 4)).half()
    wide = states.float()
    assert torch.allclose(masked_mean(states, mask).float(), masked_mean(wide, mask), rtol=1e-3)
    assert torch.equal(MeanReduction()(states, mask), masked_mean(states, mask))
    weighted = position_weighted_mean(states, mask)
    assert weighted.dtype == torch.float16
    assert torch.allclose(weighted.float(), position_weighted_mean(wide, mask), rtol=1e-3)


def test_float16_weighted_mean_model_embeds_long_texts():
    """A float16 weighted_mean model agrees with float32 on a 400-token text (its weights summed to
    80200 in float16: inf, so every vector was zero or NaN)."""
    model = tiny_model("llama", "bidirectional", "weighted_mean")
    rows = random_rows([400, 30], seed=5)
    wide = embed(model, rows, "right")
    narrow = embed(model.half(), rows, "right").float()
    cosine = torch.nn.functional.cosine_similarity(wide, narrow, dim=-1)
    assert (cosine > 0.999).all(), cosine


def test_float16_multi_layer_model_with_large_states_is_finite():
    """Layer outputs of ~200 per dimension over 400 tokens (real decoders' middle layers reach
    several hundred) summed past 65504 in each layer's float16 mean: the model returned NaN."""
    model = tiny_model("llama", "bidirectional", "multi_layer").half()
    with torch.no_grad():
        model.backbone.get_input_embeddings().weight.add_(200)
    narrow = embed(model, random_rows([400, 30], seed=5), "right")
    assert torch.isfinite(narrow).all()


def test_no_constant_leak_from_latents():
    """Embeddings of two texts are not dominated by a shared constant: with the residual from the
    input-independent latents (reference code) all embeddings would share latents.mean(0)."""
    model = tiny_model("llama", "bidirectional", "latent_attention", normalize=False)
    with torch.no_grad():
        model.pooler.latents.mul_(1000)  # a residual from latents would now dominate every output
        out = embed(model, random_rows([6, 8], seed=3), "right")
    cosine = torch.nn.functional.cosine_similarity(out[0], out[1], dim=0)
    assert cosine < 0.99


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_multi_layer_matches_reference_from_hidden_states(attention):
    """The hook-based per-layer reduction equals reducing ``output_hidden_states`` (layers 1..L-1
    raw, layer L the final normed output) and running the head on it."""
    model = tiny_model("qwen2", attention, "multi_layer", normalize=False)
    input_ids, attention_mask = pad_batch(random_rows([7, 3]), pad_id=0, padding_side="left")
    reduce = masked_mean if model.config.layer_reduction == "mean" else last_token
    with torch.no_grad():
        ours = model(input_ids=input_ids, attention_mask=attention_mask).embeddings
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = model.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             output_hidden_states=True)
        layers = list(out.hidden_states[1:-1]) + [out.last_hidden_state]
        stack = torch.stack([reduce(h, attention_mask) for h in layers], dim=1)
        reference = model.pooler(out.last_hidden_state, attention_mask, stack)
    assert torch.allclose(ours, reference, atol=TOLERANCE)


def test_multi_layer_selected_layers():
    model = tiny_model("llama", "bidirectional", "multi_layer", pooling_layers=[2, -1])
    assert model.pooler.layer_embedding.shape == (2, 32)
    out = embed(model, random_rows([5, 6]), "right")
    assert out.shape == (2, 32) and torch.isfinite(out).all()


def test_multi_layer_keeps_only_reduced_vectors():
    """At inference the collector holds (B, H) vectors, never (B, T, H) states."""
    model = tiny_model("llama", "bidirectional", "multi_layer")
    collector = model._layer_collector
    shapes = []
    original = collector.stack

    def spy(state, last_hidden_state, attention_mask):
        shapes.extend(tuple(v.shape) for v in state.caught.values())
        return original(state, last_hidden_state, attention_mask)

    collector.stack = spy
    embed(model, random_rows([30, 20]), "right")
    assert shapes == [(2, 32), (2, 32)]  # layers 1 and 2 hooked; layer 3 is the final output


@pytest.mark.parametrize("pooling", ["multi_layer", "latent_attention", "mean"])
def test_gradient_checkpointing_gives_the_same_gradients(pooling):
    """Including the gradient that reaches early layers through the per-layer vectors."""
    grads = []
    for checkpointing in (False, True):
        model = tiny_model("llama", "bidirectional", pooling).train()
        if checkpointing:
            enable_checkpointing(model)
            assert model.backbone.layers[0].gradient_checkpointing
        input_ids, attention_mask = pad_batch(random_rows([6, 9]), pad_id=0, padding_side="right")
        model(input_ids=input_ids, attention_mask=attention_mask).embeddings.sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert "backbone.layers.0.mlp.down_proj.weight" in grads[0]
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5), name


def test_reentrant_checkpointing_is_refused_for_multi_layer():
    model = tiny_model("llama", "bidirectional", "multi_layer")
    with pytest.raises(ValueError, match="non-reentrant"):
        enable_checkpointing(model, {"use_reentrant": True})


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_checkpointing_with_several_forwards_before_backward(attention):
    """The contrastive loss embeds queries and documents (other shapes) before one backward; under
    activation checkpointing every layer is recomputed then. Gradients must equal the plain ones,
    whichever way the transformers version wraps layers (forward or __call__)."""
    from .test_loss import contrastive_batch

    batch = contrastive_batch()
    grads = []
    for checkpointing in (False, True):
        model = tiny_model("llama", attention, "multi_layer").train()
        if checkpointing:
            enable_checkpointing(model)
        model(**batch).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5), name
