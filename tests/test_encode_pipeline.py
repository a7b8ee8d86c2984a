"""encode's pipeline (issue 13): the next piece is tokenized while the current one runs, pieces do not
change the result, and nothing in the batch loop makes the host wait for the device beyond what the
backbone itself does (audited on the CPU with ``llm_embed.sync_audit``; tests/test_gpu.py checks the
same on CUDA with torch's sync debug mode)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import llm_embed.encoding as encoding
from llm_embed.encoding import pad_batch, tokenize_texts
from llm_embed.sync_audit import HostSyncAudit

from .conftest import tiny_model

TEXTS = [f"text number {i} " + "about the weather " * (i % 5) for i in range(37)]


@pytest.fixture
def small_pieces(monkeypatch):
    """Pieces of 1 batch, then 2, 4, ... batches: 37 texts at batch 4 make several pieces."""
    monkeypatch.setattr(encoding, "FIRST_PIECE_BATCHES", 1)
    monkeypatch.setattr(encoding, "MAX_PIECE_TEXTS", 8)


def _model(tokenizer, pooling="mean", attention="bidirectional", **kwargs):
    model = tiny_model(pooling=pooling, attention=attention, **kwargs)
    model.tokenizer = tokenizer
    return model


def test_pieces_cover_the_call_in_order(tokenizer, small_pieces):
    pieces = list(encoding.tokenize_pieces(tokenizer, TEXTS, 4, 64, True, "q: "))
    assert [first for first, _, _ in pieces] == [0, 4, 12, 20, 28, 36]
    ids = [row for _, rows, _ in pieces for row in rows]
    assert ids == tokenize_texts(tokenizer, TEXTS, 64, True, prefix="q: ")


@pytest.mark.parametrize("packing", [False, True])
def test_pieces_do_not_change_the_embeddings(tokenizer, small_pieces, monkeypatch, packing):
    model = _model(tokenizer, pooling="latent_attention")
    pieced = model.encode(TEXTS, batch_size=4, packing=packing)
    monkeypatch.setattr(encoding, "FIRST_PIECE_BATCHES", 100)  # one piece
    whole = model.encode(TEXTS, batch_size=4, packing=packing)
    np.testing.assert_allclose(pieced, whole, atol=1e-5)


def test_truncation_warns_once_for_the_whole_call(tokenizer, small_pieces):
    model = _model(tokenizer)
    model.config.max_seq_length = 6
    with pytest.warns(UserWarning) as record:
        model.encode(TEXTS, batch_size=4)
    messages = [str(w.message) for w in record if "max_seq_length" in str(w.message)]
    long = sum(len(tokenize_texts(tokenizer, [t], 10_000, True)[0]) > 6 for t in TEXTS)
    assert messages == [f"{long} of {len(TEXTS)} texts were longer than max_seq_length=6 tokens and were truncated."]


def test_error_in_a_later_piece_names_the_text_in_the_whole_call(tokenizer, small_pieces):
    model = _model(tokenizer)
    texts = list(TEXTS)
    texts[30] = "bad \ud800 text"
    with pytest.raises(ValueError, match="text 30, character 4 is a lone surrogate"):
        model.encode(texts, batch_size=4)


def test_next_piece_is_tokenized_while_the_current_one_runs(tokenizer, small_pieces, monkeypatch):
    """Deterministic overlap check (a packed call): the forward of the first piece's batch waits until
    the second piece's tokenization has started. Tokenizing after the forward (no overlap) times out and fails.
    (On an accelerator always; on the CPU only when asked, see OVERLAP_ON_CPU.)"""
    monkeypatch.setattr(encoding, "OVERLAP_ON_CPU", True)
    model = _model(tokenizer)
    second_piece_started = threading.Event()
    threads = []
    real_tokenize = encoding.tokenize_counting_truncation

    def spy_tokenize(tok, texts, *args, first_index=0, **kwargs):
        threads.append((first_index, threading.current_thread().name))
        if first_index == 4:
            second_piece_started.set()
        return real_tokenize(tok, texts, *args, first_index=first_index, **kwargs)

    real_forward = type(model).forward
    calls = []

    def spy_forward(self, *args, **kwargs):
        if not calls:
            calls.append(second_piece_started.wait(timeout=20))
        return real_forward(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(encoding, "tokenize_counting_truncation", spy_tokenize)
        patch.setattr(type(model), "forward", spy_forward)
        model.encode(TEXTS, batch_size=4, packing=True)  # a packed call starts with a small piece
    assert calls == [True], "the second piece was not being tokenized while the first piece ran"
    assert threads[0] == (0, threading.current_thread().name)
    assert all(name.startswith("llm_embed-tokenize") for _, name in threads[1:])


@pytest.mark.parametrize("packing, starts", [(False, [0, 8, 16, 24, 32]), (True, [0, 4, 12, 20, 28, 36])])
def test_only_packed_calls_start_with_a_small_piece(tokenizer, small_pieces, monkeypatch, packing, starts):
    """With overlap (the accelerator path), a packed call starts with one batch's worth of texts so the
    device starts early; a padded call starts with MAX_PIECE_TEXTS, because padded batches are sorted
    by length within a piece only, and small pieces cost 10-13 % more padding on real workloads."""
    monkeypatch.setattr(encoding, "OVERLAP_ON_CPU", True)
    model = _model(tokenizer)
    firsts = []
    real = encoding.tokenize_counting_truncation

    def spy(tok, texts, *args, first_index=0, **kwargs):
        firsts.append(first_index)
        return real(tok, texts, *args, first_index=first_index, **kwargs)

    monkeypatch.setattr(encoding, "tokenize_counting_truncation", spy)
    model.encode(TEXTS, batch_size=4, packing=packing)
    assert sorted(firsts) == starts


def test_padded_call_pads_as_little_as_sorting_the_whole_call(tokenizer, monkeypatch):
    """The padding a padded call runs on (token slots = texts x longest, per batch) equals sorting the
    whole call by token count, also on the overlapping path: 37 texts of varied lengths in batches of 4."""
    monkeypatch.setattr(encoding, "OVERLAP_ON_CPU", True)
    model = _model(tokenizer)
    texts = [("word " * ((i * 7) % 23 + 1)).strip() for i in range(37)]
    slots = []
    real = encoding.pad_arrays

    def spy(rows, *args, **kwargs):
        block = real(rows, *args, **kwargs)
        slots.append(block.shape[1] * block.shape[2])
        return block

    monkeypatch.setattr(encoding, "pad_arrays", spy)
    model.encode(texts, batch_size=4)
    lengths = sorted((len(row) for row in tokenize_texts(tokenizer, texts, model.config.max_seq_length,
                                                         model.config.append_eos)), reverse=True)
    whole_call = sum(max(lengths[i : i + 4]) * len(lengths[i : i + 4]) for i in range(0, len(lengths), 4))
    assert len(slots) == 10 and sum(slots) == whole_call, (sum(slots), whole_call)


def _syncs_per_batch_of_encode(model, texts, batch_size, packing):
    """Host syncs that encode adds per batch: the difference between calls of 2 and 4 batches (the
    per-call ones, the final check of the output, cancel out)."""
    counts = []
    for n_batches in (2, 4):
        with HostSyncAudit() as audit:
            model.encode(texts[: n_batches * batch_size], batch_size=batch_size, packing=packing)
        counts.append(audit.count())
    return (counts[1] - counts[0]) / 2


def _syncs_per_batch_of_backbone(model, tokenizer, texts):
    ids = tokenize_texts(tokenizer, texts, 64, True)
    input_ids, attention_mask = pad_batch(ids, 0, model.config.padding_side)
    with HostSyncAudit() as audit, torch.inference_mode():
        model.backbone(input_ids=input_ids, attention_mask=attention_mask)
    return audit.count()


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
@pytest.mark.parametrize("pooling", ["last_token", "mean", "weighted_mean", "latent_attention", "multi_layer"])
def test_encode_adds_no_host_sync_per_batch(tokenizer, pooling, attention):
    """Every sync left in the padded loop is the backbone's own (transformers' SDPA mask checks whether
    the batch has padding): per batch, encode syncs exactly as often as the raw backbone."""
    model = _model(tokenizer, pooling=pooling, attention=attention)
    texts = [f"sentence {i} " + "word " * i for i in range(32)]  # distinct lengths: every batch of 4 has padding
    ours = _syncs_per_batch_of_encode(model, texts, 4, packing=False)
    backbone = _syncs_per_batch_of_backbone(model, tokenizer, texts[:4])
    assert ours == backbone, HostSyncAudit.__doc__


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_packed_encode_has_no_host_sync_per_batch(tokenizer, attention):
    """The packed path builds its own mask on the host: no sync at all per batch."""
    model = _model(tokenizer, pooling="multi_layer", attention=attention)
    texts = [f"sentence {i} " + "word " * (i % 3) for i in range(64)]
    assert _syncs_per_batch_of_encode(model, texts, 2, packing=True) == 0


def test_audit_catches_the_usual_syncs():
    """The auditor itself: each kind of host sync is recorded with our file as its caller."""
    x = torch.arange(6.0)
    mask = x > 2
    with HostSyncAudit() as audit:
        x.sum().item()
        bool(x.any())
        x[mask]
        x.nonzero()
        torch.repeat_interleave(torch.tensor([1, 2]))
        x + 1  # not a sync
        torch.repeat_interleave(torch.tensor([1, 2]), output_size=3)  # not a sync: size given
    assert [sync.op for sync in audit.syncs] == ["_local_scalar_dense", "_local_scalar_dense", "index", "nonzero",
                                                 "repeat_interleave"]
    assert all("test_encode_pipeline.py" in sync.where for sync in audit.syncs)


class _OpCounter(__import__("torch").utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ not in ("detach", "alias", "view", "unsqueeze", "_unsafe_view", "expand"):
            self.ops += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["mean", "last_token"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_prepared_layer_reduction_equals_the_function_and_runs_fewer_ops(name, side):
    """Multi-layer pooling reduces every layer with the same mask: prepared once per pass, a layer
    costs at most three ops (mean) or one (last token) and gives exactly the plain function's result."""
    from llm_embed.pooling import LAYER_REDUCTIONS, last_token, masked_mean

    function = {"mean": masked_mean, "last_token": last_token}[name]
    _, mask = pad_batch([[1] * n for n in (3, 7, 1, 5)], 0, side)
    states = torch.randn(4, 7, 16, dtype=torch.bfloat16)
    reduce = LAYER_REDUCTIONS[name].prepare(mask)
    reduce(states)  # first call per dtype may cast the counts once
    with _OpCounter() as prepared:
        ours = reduce(states)
    with _OpCounter() as plain:
        expected = function(states, mask)
    assert torch.equal(ours.to(states.dtype), expected)  # the collector casts the stacked layers once
    assert prepared.ops <= {"mean": 3, "last_token": 1}[name] < plain.ops, (prepared.ops, plain.ops)


def test_no_tokenizing_thread_on_the_cpu(tokenizer, small_pieces):
    """On the CPU the model's own threads use every core: pieces are tokenized in turn, on the caller."""
    model = _model(tokenizer)
    names = []
    real = encoding.tokenize_counting_truncation

    def spy(*args, **kwargs):
        names.append(threading.current_thread().name)
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(encoding, "tokenize_counting_truncation", spy)
        model.encode(TEXTS, batch_size=4)
    assert len(names) > 1 and set(names) == {threading.current_thread().name}
