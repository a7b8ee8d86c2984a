"""Bidirectional mode really is bidirectional (change a late token, an early state moves), for every
architecture, attention implementation, with and without padding, at batch size 1; causal is not."""

import pytest
import torch

from llm_embed import LLMEmbeddingConfig, LLMEmbeddingModel
from llm_embed.bidirectional import make_bidirectional

from .conftest import ARCHS, tiny_backbone_config, tiny_model

SEQ = 12


def first_token_moves(model, batch_size: int, padded: bool, device: str = "cpu") -> bool:
    """Does the first token's state of row 0 change when row 0's last real token changes?"""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 1000, (batch_size, SEQ), generator=generator)
    mask = torch.ones_like(ids)
    if padded:  # row 0 is padded on the right; another row (if any) on the left
        mask[0, SEQ - 3 :] = 0
        if batch_size > 1:
            mask[1, :4] = 0
    last = int(mask[0].nonzero().max())
    changed = ids.clone()
    changed[0, last] = ids[0, last] + 7
    ids, changed, mask = ids.to(device), changed.to(device), mask.to(device)
    with torch.no_grad():
        states = [
            model.backbone(input_ids=x, attention_mask=mask if padded else None).last_hidden_state[0, 0].float()
            for x in (ids, changed)
        ]
    return not torch.allclose(states[0], states[1], atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("batch_size, padded", [(1, False), (3, False), (3, True)])
def test_bidirectional_is_bidirectional_and_causal_is_not(arch, impl, batch_size, padded):
    bidirectional = tiny_model(arch, "bidirectional", attn_implementation=impl)
    causal = tiny_model(arch, "causal", attn_implementation=impl)
    assert bidirectional.backbone.config._attn_implementation == impl
    assert first_token_moves(bidirectional, batch_size, padded)
    assert not first_token_moves(causal, batch_size, padded)


@pytest.mark.parametrize("arch", ["mistral", "gemma3"])
def test_sliding_window_layers_are_bidirectional_within_the_window(arch):
    """Window 4, no padding, batch 1 (the mask-skipping case): a later token inside the window reaches
    the first token through the bidirectional sliding-window mask."""
    model = tiny_model(arch, "bidirectional", attn_implementation="sdpa")
    ids = torch.randint(5, 1000, (1, SEQ))
    changed = ids.clone()
    changed[0, 2] += 3
    with torch.no_grad():
        a = model.backbone(input_ids=ids).last_hidden_state[0, 0]
        b = model.backbone(input_ids=changed).last_hidden_state[0, 0]
    assert not torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("arch", ["mistral", "gemma3"])
def test_sliding_window_layers_keep_their_window_on_both_sides(arch):
    """What docs/usage.md says of bidirectional sliding-window layers: the window is kept, on both
    sides. On the first (sliding) layer, token 0 sees token 4 of a window of 4, and not token 5."""
    from llm_embed.layer_states import find_decoder_layers

    model = tiny_model(arch, "bidirectional", attn_implementation="sdpa")
    assert model.config.backbone_config.sliding_window == 4
    first_layer = find_decoder_layers(model.backbone, model.config.backbone_num_layers)[0]
    states = []
    first_layer.register_forward_hook(
        lambda module, args, out: states.append(out[0] if isinstance(out, tuple) else out))
    ids = torch.randint(5, 1000, (1, 10), generator=torch.Generator().manual_seed(1))
    moved = {}
    for position in (4, 5, 9):
        changed = ids.clone()
        changed[0, position] += 7
        states.clear()
        with torch.no_grad():
            model.backbone(input_ids=ids), model.backbone(input_ids=changed)
        moved[position] = float((states[0][0, 0] - states[1][0, 0]).abs().max())
    assert moved[4] > 1e-4 and moved[5] == 0 and moved[9] == 0, moved


def test_causal_mode_leaves_the_backbone_untouched():
    torch.manual_seed(0)
    config = LLMEmbeddingConfig(backbone_config=tiny_backbone_config("llama"), attention="causal", pooling="mean")
    model = LLMEmbeddingModel(config)
    assert getattr(model.backbone.config, "is_causal", True) is True
    assert all(m.is_causal for m in model.backbone.modules() if isinstance(getattr(m, "is_causal", None), bool))


def test_every_attention_module_is_switched():
    model = tiny_model("llama", "bidirectional")
    flags = [m.is_causal for m in model.backbone.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    assert len(flags) == 3 and not any(flags)
    assert model.backbone.config.is_causal is False
    # the saved design stays the single source of truth: the nested backbone config is not altered
    assert getattr(model.config.backbone_config, "is_causal", True) is True


def test_backbone_bypassing_masking_utils_is_refused():
    from transformers import MambaConfig, MambaModel

    backbone = MambaModel(MambaConfig(hidden_size=16, num_hidden_layers=1, vocab_size=50))
    with pytest.raises(ValueError, match="masking_utils"):
        make_bidirectional(backbone, backbone.layers)


# ----------------------------------------------------------------------------- backbones that cannot be bidirectional
# Before: each was accepted as attention="bidirectional" and stayed causal in some or all layers, silently.

TINY = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, vocab_size=1000)


def hybrid_configs():
    import transformers as T

    return {
        "jamba (mamba layers)": T.JambaConfig(
            **TINY, num_hidden_layers=2, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
            expert_layer_offset=1, num_experts=2, mamba_d_state=4, mamba_expand=1, mamba_dt_rank=4,
            use_mamba_kernels=False),
        "lfm2 (convolution layers)": T.Lfm2Config(**TINY, num_hidden_layers=2, layer_types=["conv", "full_attention"]),
        "qwen3_next (linear attention)": T.Qwen3NextConfig(
            **TINY, num_hidden_layers=2, head_dim=8, moe_intermediate_size=32, shared_expert_intermediate_size=32,
            num_experts=2, num_experts_per_tok=1, layer_types=["linear_attention", "full_attention"],
            linear_num_value_heads=2, linear_num_key_heads=2, linear_key_head_dim=8, linear_value_head_dim=8),
        "recurrent_gemma (RG-LRU layers)": T.RecurrentGemmaConfig(
            **TINY, num_hidden_layers=2, lru_width=32, attention_window_size=4,
            block_types=["recurrent", "attention"]),
    }


@pytest.mark.parametrize("name", ["jamba (mamba layers)", "lfm2 (convolution layers)", "qwen3_next (linear attention)",
                                  "recurrent_gemma (RG-LRU layers)"])
def test_layers_without_attention_are_refused_for_bidirectional(name):
    backbone_config = hybrid_configs()[name]
    # by its layer when the model is built; a transformers whose modeling code for it bypasses masking_utils
    # (recurrent_gemma on 5.2, the floor) refuses it with the config already
    with pytest.raises(ValueError, match=r"its layer 1 \(\w+\) mixes tokens without attention .* causal by "
                                         r"construction|does not build its attention masks with transformers\."
                                         r"masking_utils, so it would silently stay causal"):
        LLMEmbeddingModel(LLMEmbeddingConfig(backbone_config=backbone_config, attention="bidirectional",
                                             pooling="mean"))
    LLMEmbeddingModel(LLMEmbeddingConfig(backbone_config=backbone_config, attention="causal", pooling="mean"))


def test_an_attention_with_its_own_causal_mask_buffer_is_refused_for_bidirectional():
    from transformers import GPTNeoConfig

    backbone_config = GPTNeoConfig(hidden_size=32, num_layers=2, num_heads=4,
                                   attention_types=[[["local", "global"], 1]], window_size=4, vocab_size=1000,
                                   max_position_embeddings=64)
    config = LLMEmbeddingConfig(backbone_config=backbone_config, attention="bidirectional", pooling="mean")
    with pytest.raises(ValueError, match=r"GPTNeoSelfAttention\) applies its own causal mask \(buffer 'bias'\)"):
        LLMEmbeddingModel(config)


def test_chunked_attention_is_refused_for_bidirectional_at_config_time():
    from transformers import Llama4TextConfig

    backbone_config = Llama4TextConfig(**TINY, num_hidden_layers=2, head_dim=8, intermediate_size_mlp=64,
                                       num_local_experts=2, attention_chunk_size=4)
    with pytest.raises(ValueError, match="chunked-attention layers .* build causal masks whatever is_causal says"):
        LLMEmbeddingConfig(backbone_config=backbone_config, attention="bidirectional")
    LLMEmbeddingConfig(backbone_config=backbone_config, attention="causal")


def embedding_gemma_config(layer_types):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(**TINY, num_hidden_layers=len(layer_types), head_dim=8, sliding_window=4,
                            use_bidirectional_attention=True, layer_types=layer_types)


def test_a_backbone_bidirectional_by_its_own_config_is_refused_as_causal():
    """EmbeddingGemma's configs set use_bidirectional_attention: "causal" ran bidirectionally (before)."""
    with pytest.raises(ValueError, match="sets use_bidirectional_attention=True, so the backbone attends in both "
                                         "directions by itself. Use attention='bidirectional'"):
        LLMEmbeddingConfig(backbone_config=embedding_gemma_config(["full_attention"]), attention="causal")


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_a_natively_bidirectional_gemma3_keeps_its_own_masks(impl):
    """Gemma 3 with use_bidirectional_attention builds its own sliding window (|i - j| < window); the
    generic bidirectional one (<=) let each token see one more on each side: states differed by up to
    2.8 on texts longer than the window (before)."""
    import copy

    from transformers import AutoModel

    torch.manual_seed(0)
    native = AutoModel.from_config(embedding_gemma_config(["sliding_attention", "full_attention"]),
                                   attn_implementation=impl).eval()
    config = LLMEmbeddingConfig(backbone_config=native.config.to_dict(), attention="bidirectional", pooling="mean")
    model = LLMEmbeddingModel(config, backbone=copy.deepcopy(native)).eval()
    ids = torch.randint(5, 1000, (2, SEQ), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, SEQ - 3:] = 0
    for attention_mask in (None, mask):
        with torch.no_grad():
            expected = native(input_ids=ids, attention_mask=attention_mask).last_hidden_state
            got = model.backbone(input_ids=ids, attention_mask=attention_mask).last_hidden_state
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert first_token_moves(model, 1, False)


def test_alibi_backbones_are_not_packed():
    """Falcon with ALiBi computes its biases from the 2-D mask: packing=True failed with 'too many values to
    unpack' inside transformers (before); packing=None pads."""
    from transformers import FalconConfig

    from llm_embed.packing import resolve_packing

    backbone_config = FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=1000,
                                   alibi=True)
    model = LLMEmbeddingModel(LLMEmbeddingConfig(backbone_config=backbone_config, attention="causal", pooling="mean"))
    with pytest.raises(ValueError, match="ALiBi position biases are computed from a \\(batch, length\\) padding mask"):
        resolve_packing(model, True, 8)
    assert resolve_packing(model, None, 8) is None


def test_a_natively_bidirectional_gemma3_packs_bidirectionally(tokenizer):
    """Packed batches took their mask's direction from backbone.config.is_causal, which such a backbone
    keeps True (its own code makes the masks): packing=True embedded it causally."""
    from transformers import Gemma3TextConfig

    from .conftest import VOCAB

    backbone = Gemma3TextConfig(**{**TINY, "vocab_size": VOCAB}, num_hidden_layers=2, head_dim=8, sliding_window=64,
                                use_bidirectional_attention=True, layer_types=["sliding_attention", "full_attention"])
    torch.manual_seed(0)
    model = LLMEmbeddingModel(LLMEmbeddingConfig(backbone_config=backbone, attention="bidirectional",
                                                 pooling="mean")).eval()
    model.tokenizer = tokenizer
    texts = ["a short text", "another one, a little longer than the first", "x"]
    padded = model.encode(texts, packing=False)
    torch.testing.assert_close(torch.from_numpy(model.encode(texts, packing=True)), torch.from_numpy(padded),
                               atol=1e-5, rtol=0)
