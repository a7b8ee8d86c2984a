"""One model, several threads: every head returns exactly the single-thread vectors.

Web servers call ``encode`` from thread pools (FastAPI's sync endpoints, gunicorn threads). The
texts of each thread are different but tokenize to the same lengths, so that a head keeping any
per-call state on the instance would mix batches of identical shapes without failing loudly
(the bug this guards against gave wrong vectors in 22 of 50 calls for ``multi_layer``).
"""

from __future__ import annotations

import copy
import io
import threading

import pytest
import torch

from .conftest import POOLINGS, tiny_model

THREADS = 4
ROUNDS = 6


def same_length_batches(tokenizer, count: int, size: int) -> list[list[str]]:
    """``count`` batches of ``size`` different texts, every text the same number of tokens."""
    words = ["apple", "river", "stone", "cloud", "piano", "tiger", "lemon", "glass", "honey", "forest", "candle",
             "rocket"]
    one_token = [w for w in words if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1]
    assert len(one_token) >= 6, one_token
    batches = []
    for b in range(count):
        texts = []
        for i in range(size):
            picks = [one_token[(b * 7 + i * 3 + k * 5) % len(one_token)] for k in range(6)]
            texts.append("the" + "".join(" " + w for w in picks))
        batches.append(texts)
    lengths = {len(tokenizer(t)["input_ids"]) for batch in batches for t in batch}
    assert len(lengths) == 1, lengths
    assert len({tuple(batch) for batch in batches}) == count
    return batches


def run_in_threads(work, jobs: list) -> list:
    """Run ``work(job)`` for every job from THREADS threads at once, released together by a barrier."""
    results: list = [None] * len(jobs)
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def worker(offset: int) -> None:
        try:
            barrier.wait()
            for index in range(offset, len(jobs), THREADS):
                results[index] = work(jobs[index])
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(offset,)) for offset in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
@pytest.mark.parametrize("pooling", POOLINGS)
def test_encode_from_threads_equals_single_thread(tokenizer, pooling, attention):
    model = tiny_model("llama", attention, pooling, seed=1)
    model.tokenizer = tokenizer
    batches = same_length_batches(tokenizer, THREADS, size=5)
    expected = [model.encode(texts, batch_size=5, convert_to_tensor=True) for texts in batches]
    jobs = [i % THREADS for i in range(THREADS * ROUNDS)]
    results = run_in_threads(lambda b: model.encode(batches[b], batch_size=5, convert_to_tensor=True), jobs)
    for job, result in zip(jobs, results):
        assert torch.equal(result, expected[job]), f"batch {job}: max diff {(result - expected[job]).abs().max()}"


def test_forward_from_threads_equals_single_thread_multi_layer():
    """The model's forward (not only encode) is safe too: the multi-layer collector keeps its
    per-call state per thread."""
    model = tiny_model("llama", "bidirectional", "multi_layer", seed=2)
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randint(5, 1000, (3, 11), generator=generator) for _ in range(THREADS)]
    mask = torch.ones(3, 11, dtype=torch.long)
    with torch.no_grad():
        expected = [model(input_ids=ids, attention_mask=mask).embeddings for ids in inputs]

    def work(index):
        with torch.no_grad():
            return model(input_ids=inputs[index], attention_mask=mask).embeddings

    jobs = [i % THREADS for i in range(THREADS * ROUNDS)]
    for job, result in zip(jobs, run_in_threads(work, jobs)):
        assert torch.equal(result, expected[job])


@pytest.mark.parametrize("pooling", POOLINGS)
def test_deepcopy_and_torch_save_keep_every_head_working(pooling):
    """EMA / teacher copies and ``torch.save(model)``: the copy's hooks write into the copy's own
    collector, and the original keeps working after the copy ran. The pickle is only written, never
    loaded (weights load from safetensors only): deepcopy restores through the same
    ``__getstate__`` / ``__setstate__`` that unpickling uses."""
    model = tiny_model("llama", "bidirectional", pooling, seed=3)
    ids = torch.randint(5, 1000, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1] * 9, [1] * 6 + [0] * 3])
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).embeddings
    twin = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)  # failed before: "Can't pickle local object ... hook"
    assert buffer.tell() > 0
    with torch.no_grad():
        assert torch.equal(twin(input_ids=ids, attention_mask=mask).embeddings, expected)
        # a change to the copy's weights reaches the copy only
        for name, param in twin.named_parameters():
            if name.startswith("backbone.layers.0."):
                param.add_(0.5)
        assert not torch.equal(twin(input_ids=ids, attention_mask=mask).embeddings, expected)
        assert torch.equal(model(input_ids=ids, attention_mask=mask).embeddings, expected)
    if pooling == "multi_layer":
        assert twin._layer_collector is not model._layer_collector
        hooks = [hook for layer in twin.backbone.layers for hook in layer._forward_hooks.values()]
        assert hooks and all(hook.collector is twin._layer_collector for hook in hooks)


@pytest.mark.parametrize("pooling", ["mean", "multi_layer"])
def test_encode_from_threads_with_overlapped_tokenizing(tokenizer, pooling, monkeypatch):
    """The accelerator path (issue 13): each call tokenizes its next piece in a worker thread, so with
    several callers several worker threads use the one tokenizer at once, also while it carries a
    truncation / padding state left by another user of it (a ``tokenizer(..., truncation=True)``
    call). Forced on the CPU (``OVERLAP_ON_CPU``) with pieces of 1, 2, 2, ... batches: every call
    still returns exactly the single-thread vectors, and the pieces were tokenized off the caller."""
    import llm_embed.encoding as encoding

    monkeypatch.setattr(encoding, "OVERLAP_ON_CPU", True)
    monkeypatch.setattr(encoding, "FIRST_PIECE_BATCHES", 1)
    monkeypatch.setattr(encoding, "MAX_PIECE_TEXTS", 8)
    tokenizer = copy.deepcopy(tokenizer)  # its backend state is changed below
    tokenizer("warm", truncation=True, max_length=4, padding="max_length")
    assert tokenizer.backend_tokenizer.truncation is not None
    model = tiny_model("llama", "bidirectional", pooling, seed=4)
    model.tokenizer = tokenizer
    words = "apple river stone cloud piano tiger lemon glass honey forest".split()
    calls = [[" ".join(words[(c + i + k) % len(words)] for k in range(1 + (c * 5 + i * 3) % 17)) for i in range(22)]
             for c in range(THREADS)]
    expected = [model.encode(texts, batch_size=4, convert_to_tensor=True) for texts in calls]
    names: set[str] = set()
    real = encoding.tokenize_counting_truncation

    def spy(*args, **kwargs):
        names.add(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(encoding, "tokenize_counting_truncation", spy)
    jobs = [i % THREADS for i in range(THREADS * ROUNDS)]
    results = run_in_threads(lambda c: model.encode(calls[c], batch_size=4, convert_to_tensor=True), jobs)
    for job, result in zip(jobs, results):
        assert torch.equal(result, expected[job]), f"call {job}: max diff {(result - expected[job]).abs().max()}"
    assert any(name.startswith("llm_embed-tokenize") for name in names), names
