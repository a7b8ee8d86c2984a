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
        make_bidirectional(backbone)
