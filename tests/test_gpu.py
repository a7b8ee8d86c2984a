"""The same behavioural checks on a CUDA device, where SDPA dispatches to flash / memory-efficient
kernels that take ``is_causal`` from the module when no mask is built, and flex attention compiles
block masks. Skipped without CUDA; run on a lent GPU with ``pytest tests/test_gpu.py``."""

import pytest
import torch

from llm_embed.encoding import pad_batch

from .conftest import ATTENTIONS, POOLINGS, tiny_model
from .test_attention import first_token_moves

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

IMPLEMENTATIONS = ["eager", "sdpa", "flex_attention"]


def on_cuda(model, dtype=torch.float32):
    return model.to(device="cuda", dtype=dtype)


@pytest.fixture(autouse=True)
def exact_fp32_matmuls():
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = previous


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen3", "gemma3", "gpt2"])
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch_size, padded", [(1, False), (3, False), (3, True)])
def test_bidirectional_on_cuda(arch, impl, dtype, batch_size, padded):
    if arch == "gpt2" and impl == "flex_attention":
        pytest.skip("GPT-2 does not support flex attention in transformers")
    bidirectional = on_cuda(tiny_model(arch, "bidirectional", attn_implementation=impl, head_dim=16), dtype)
    causal = on_cuda(tiny_model(arch, "causal", attn_implementation=impl, head_dim=16), dtype)
    assert first_token_moves(bidirectional, batch_size, padded, device="cuda")
    assert not first_token_moves(causal, batch_size, padded, device="cuda")


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("impl", ["sdpa", "flex_attention"])
def test_batch_invariance_on_cuda(impl, pooling, attention):
    model = on_cuda(tiny_model("llama", attention, pooling, attn_implementation=impl, head_dim=16))
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(5, 1000, (n,), generator=generator).tolist() for n in (5, 40, 3, 57)]

    def embed(batch_rows, side):
        ids, mask = pad_batch(batch_rows, pad_id=0, padding_side=side)
        with torch.no_grad():
            return model(input_ids=ids.cuda(), attention_mask=mask.cuda()).embeddings

    alone = embed(rows[:1], "right")[0]
    for side in ("left", "right"):
        in_batch = embed([rows[1], rows[0], rows[2], rows[3]], side)[1]
        assert (alone - in_batch).abs().max() <= 1e-5, (side, float((alone - in_batch).abs().max()))


@pytest.fixture(scope="module")
def small_tokenizer():
    """A byte-level BPE trained here on a few sentences: the GPU machine need not have the bundled
    SmolLM2 (its GGUF travels only with the study's device calls)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([f"sentence {i} about the weather and words" for i in range(200)], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")


def _cuda_syncs(run) -> int:
    """Host-device synchronisations while ``run()`` runs, as torch's sync debug mode reports them (one
    warning per synchronising call: stream syncs, blocking copies, scalar reads)."""
    import warnings

    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run()
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("pooling", POOLINGS)
def test_encode_syncs_no_more_than_the_backbone_per_batch_on_cuda(small_tokenizer, pooling, attention):
    """Issue 13: per batch, encode synchronises the host with the GPU no more often than the raw
    backbone does on the same padded batch (transformers' SDPA mask check reads whether a batch has
    padding; that one is the backbone's). Per-call syncs (the output's copy and check) cancel out in
    the difference between a 2-batch and a 4-batch call."""
    model = on_cuda(tiny_model("llama", attention, pooling, head_dim=16), torch.bfloat16)
    model.tokenizer = small_tokenizer
    texts = [f"sentence {i} " + "word " * i for i in range(32)]  # distinct lengths: every batch of 4 has padding
    model.encode(texts[:8], batch_size=4)  # warm-up: pinned host blocks, kernels
    per_call = [_cuda_syncs(lambda n=n: model.encode(texts[: n * 4], batch_size=4, packing=False)) for n in (2, 4)]
    ours = (per_call[1] - per_call[0]) / 2
    ids, mask = pad_batch([small_tokenizer(t)["input_ids"] for t in texts[:4]], 0, model.config.padding_side)
    ids, mask = ids.cuda(), mask.cuda()

    def raw():
        with torch.inference_mode():
            model.backbone(input_ids=ids, attention_mask=mask)

    assert ours <= _cuda_syncs(raw), (per_call, _cuda_syncs(raw))


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("pooling", ["last_token", "multi_layer"])
def test_encode_packs_through_flex_by_default_on_cuda(small_tokenizer, pooling, attention):
    """Issue 13: on CUDA an SDPA backbone that supports flex attention is encoded packed by default
    (SDPA_WITH_FLEX), equal to the padded path within bf16 rounding."""
    from llm_embed.packed_attention import SDPA_WITH_FLEX
    from llm_embed.packing import resolve_packing

    model = on_cuda(tiny_model("llama", attention, pooling, head_dim=16), torch.bfloat16)
    model.tokenizer = small_tokenizer
    texts = [f"sentence {i} " + "about the weather " * (i % 4) for i in range(40)]
    padded = model.encode(texts, batch_size=8, packing=False)
    default = model.encode(texts, batch_size=8)
    assert model.backbone.config._attn_implementation == SDPA_WITH_FLEX
    assert resolve_packing(model, None, 40) == "flex"
    assert abs(default - padded).max() <= 2e-2, abs(default - padded).max()
