"""Packing (``llm_embed.packing``) gives the padded results, and the performance benchmark runs.

Packed == padded is checked on the CPU through the dense block-diagonal mask (SDPA and eager) for
every pooling head and both attention modes, and through flex attention's BlockMask where the CPU
can compile it (slow: one test). ``tests/test_gpu.py``-style CUDA checks of flex attention run in
``test_packed_equals_padded_on_cuda`` (skipped without CUDA). Timing ratios are not asserted here:
they are the benchmark's output (docs/performance.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import llm_embed.encoding
from llm_embed.packing import (
    FLEX_ROW_MULTIPLE,
    PADDED_FACTOR,
    first_fit_decreasing,
    pack_batch,
    packing_mode,
    plan_packed_batches,
    resolve_packing,
)

from .conftest import ATTENTIONS, POOLINGS, SHARED_DATA, tiny_model

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "a short one",
    "a much longer sentence about cats, dogs and the many other animals living on the old farm by the river",
    "x",
    "a medium length text about the weather",
    "another text of middling size here",
    "tiny",
    "the quick brown fox jumps over the lazy dog, twice, and then once more for good measure",
]

# very different lengths (about 1 to 300 tokens): call-level packing fills the long texts' rows with
# short texts from other batches
VARIED = [" ".join(f"w{j}" for j in range(n)) for n in (3, 150, 1, 40, 7, 90, 2, 12, 60, 5, 25, 1, 33, 8, 110)]


@pytest.fixture(scope="module")
def attach(tokenizer):
    def attach(model):
        model.tokenizer = tokenizer
        return model

    return attach


def test_first_fit_decreasing_packs_rows():
    rows = first_fit_decreasing([5, 2, 3, 1, 4], 5)
    assert sorted(i for row in rows for i in row) == [0, 1, 2, 3, 4]
    assert all(sum([5, 2, 3, 1, 4][i] for i in row) <= 5 for row in rows)
    assert len(rows) == 3  # 5 | 4+1 | 3+2
    with pytest.raises(ValueError, match="more than the packed row length"):
        first_fit_decreasing([6], 5)


def _unpacked_slots(lengths, plan):
    return len(plan.texts) * max(lengths[i] for i in plan.texts)


@pytest.mark.parametrize("mode", ["flex", "dense", "flash"])
def test_plan_packed_batches_places_every_text_within_the_budget(mode):
    generator = torch.Generator().manual_seed(3)
    for _ in range(40):
        count = int(torch.randint(1, 200, (1,), generator=generator))
        top = int(torch.randint(1, 300, (1,), generator=generator))
        lengths = torch.randint(1, top + 1, (count,), generator=generator).tolist()
        batch_size = int(torch.randint(1, 9, (1,), generator=generator))
        plans = plan_packed_batches(lengths, batch_size, mode)
        placed = sorted(i for plan in plans for i in plan.texts)
        assert placed == list(range(count))
        longest = max(lengths)
        if mode == "flex":  # whole flex blocks (test_flex_rows_are_whole_blocks)
            longest = -(-longest // FLEX_ROW_MULTIPLE) * FLEX_ROW_MULTIPLE
        budget = batch_size * longest
        for plan in plans:
            assert sorted(i for row in plan.row_texts for i in row) == list(range(len(plan.texts)))
            assert _unpacked_slots(lengths, plan) <= PADDED_FACTOR * budget
            if mode == "flash":
                assert plan.row_length is None and len(plan.row_texts) == 1
                assert sum(lengths[i] for i in plan.texts) <= budget
            else:
                assert plan.row_length == longest  # one row length for the whole call
                assert len(plan.row_texts) <= batch_size
                assert all(sum(lengths[plan.texts[j]] for j in row) <= longest for row in plan.row_texts)
        if mode != "flash":  # the rows are those of first-fit decreasing over the whole call
            rows = sum(len(plan.row_texts) for plan in plans)
            assert rows == len(first_fit_decreasing(lengths, longest, max_padded=PADDED_FACTOR * longest))


def test_plan_packs_across_batches_and_bounds_the_unpacked_layout():
    # padded in batches of 2: [10, 7] [6, 3] [3, 1] -> 20 + 12 + 6 = 38 slots; per call: 10 | 7+3 | 6+3+1 = 30
    lengths = [3, 10, 6, 1, 7, 3]
    plans = plan_packed_batches(lengths, 2, "dense")
    assert [[[plan.texts[j] for j in row] for row in plan.row_texts] for plan in plans] == [[[1], [4, 0]], [[2, 5, 3]]]
    # one long text and thousands of short ones: the batch holding the long text does not also take
    # every short text (its unpacked layout would be 6,401 x 512 slots)
    lengths = [512] + [5] * 6400
    plans = plan_packed_batches(lengths, 64, "flex")
    assert max(_unpacked_slots(lengths, plan) for plan in plans) <= PADDED_FACTOR * 64 * 512
    assert sum(len(plan.row_texts) for plan in plans) == 1 + 6400 // 102 + 1  # rows still full
    flash = plan_packed_batches(lengths, 64, "flash")
    assert max(_unpacked_slots(lengths, plan) for plan in flash) <= PADDED_FACTOR * 64 * 512
    with pytest.raises(ValueError, match="at least one"):
        plan_packed_batches([], 4, "flex")


def test_flex_rows_are_whole_blocks():
    """Under flex the row length is rounded up to flex's block size (fewer shapes to compile; rows of
    short texts hold more of them); the dense and flash layouts keep the longest text's length."""
    lengths = [20, 7, 5, 13] * 10
    flex = plan_packed_batches(lengths, 2, "flex")
    assert {plan.row_length for plan in flex} == {FLEX_ROW_MULTIPLE}
    assert sum(len(plan.row_texts) for plan in flex) == 4  # 40 texts, 450 tokens, in rows of 128
    assert {plan.row_length for plan in plan_packed_batches(lengths, 2, "dense")} == {20}
    assert {plan.row_length for plan in plan_packed_batches([130, 5], 2, "flex")} == {256}


def test_pack_batch_layout_and_mask():
    rows = [[11, 12, 13, 14], [21, 22], [31, 32]]
    packed = pack_batch(rows, pad_id=0, mode="dense", is_causal=False)
    assert packed.input_ids.shape == (2, 4)  # [1st] [2nd + 3rd]
    assert packed.input_ids.tolist() == [[11, 12, 13, 14], [21, 22, 31, 32]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 0, 1]]
    mask = packed.attention_mask[:, 0]
    assert mask[1, 0, 1] and not mask[1, 0, 2] and not mask[1, 3, 1]  # texts do not see each other
    causal = pack_batch(rows, pad_id=0, mode="dense", is_causal=True).attention_mask[:, 0]
    assert causal[1, 1, 0] and not causal[1, 0, 1]
    states = torch.arange(8.0).reshape(2, 4, 1)
    assert packed.unpack(states)[..., 0].tolist() == [[0, 1, 2, 3], [4, 5, 0, 0], [6, 7, 0, 0]]
    assert packed.padded_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]
    flash = pack_batch(rows, pad_id=0, mode="flash", is_causal=True)
    assert flash.input_ids.shape == (1, 8) and flash.attention_mask is None
    assert flash.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 0, 1]]
    with pytest.raises(ValueError, match="packing mode"):
        pack_batch(rows, pad_id=0, mode="bogus", is_causal=True)
    with pytest.raises(ValueError, match="at least one"):
        pack_batch([[1], []], pad_id=0, mode="dense", is_causal=True)
    wide = pack_batch(rows, pad_id=0, mode="dense", is_causal=False, row_texts=[[1, 2], [0]], row_length=6)
    assert wide.input_ids.tolist() == [[21, 22, 31, 32, 0, 0], [11, 12, 13, 14, 0, 0]]
    assert (wide.unpack(torch.arange(12.0).reshape(2, 6, 1))[..., 0].tolist()
            == [[6, 7, 8, 9], [0, 1, 0, 0], [2, 3, 0, 0]])
    for bad in ([[0, 1], [2]], [[0], [1]], [[0], [0, 1, 2]]):
        with pytest.raises(ValueError, match="row_texts"):
            pack_batch(rows, pad_id=0, mode="dense", is_causal=True, row_texts=bad, row_length=4)


def test_packing_modes_and_defaults():
    assert packing_mode("flex_attention") == "flex"
    assert packing_mode("flash_attention_2") == "flash"
    assert packing_mode("sdpa") == "dense" and packing_mode(None) == "dense"
    model = tiny_model("llama", "causal", "mean")
    assert resolve_packing(model, None, 10) is None  # sdpa: padded by default
    assert resolve_packing(model, True, 10) == "dense"
    assert resolve_packing(model, False, 10) is None
    assert (resolve_packing(tiny_model("llama", "causal", "mean", attn_implementation="eager"), True, 10)
            == "dense_additive")
    with pytest.raises(TypeError, match="packing"):
        resolve_packing(model, "yes", 10)
    windowed = tiny_model("mistral", "causal", "mean")  # sliding window 4
    with pytest.raises(ValueError, match="window"):
        resolve_packing(windowed, True, 10)
    assert resolve_packing(windowed, True, 4) == "dense"  # texts within the window: exact


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_equals_padded(attach, impl, pooling, attention):
    model = attach(tiny_model("llama", attention, pooling, attn_implementation=impl))
    padded = model.encode(TEXTS, batch_size=5, packing=False)
    packed = model.encode(TEXTS, batch_size=5, packing=True)
    assert abs(padded - packed).max() <= 1e-5


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_call_packed_equals_padded_varied_lengths(attach, batch_size, pooling, attention):
    """Call-level packing: texts of 1 to about 300 tokens, rows of the longest, several batches."""
    model = attach(tiny_model("llama", attention, pooling))
    padded = model.encode(VARIED, batch_size=batch_size, packing=False)
    assert abs(padded - model.encode(VARIED, batch_size=batch_size, packing=True)).max() <= 1e-5
    for text in (VARIED[1], VARIED[2]):  # single-text calls
        alone = model.encode(text, packing=False)
        assert alone.shape == padded.shape[1:] and abs(alone - model.encode(text, packing=True)).max() <= 1e-5


def test_encode_packs_across_the_call_in_the_callers_order(attach, monkeypatch):
    """encode packs each piece of a call (the whole call when it is one piece) into rows of its longest
    text (not per text-count batch), at most batch_size rows per forward pass, and returns the
    embeddings in the caller's order."""
    monkeypatch.setattr(llm_embed.encoding, "FIRST_PIECE_BATCHES", 1000)  # one piece
    calls = []

    def spy(rows, pad_id, **kwargs):
        packed = pack_batch(rows, pad_id, **kwargs)
        calls.append(([len(row) for row in rows], tuple(packed.input_ids.shape)))
        return packed

    monkeypatch.setattr(llm_embed.encoding, "pack_batch", spy)
    model = attach(tiny_model("llama", "bidirectional", "mean"))
    packed = model.encode(VARIED, batch_size=3, packing=True)
    lengths = [n for batch, _ in calls for n in batch]
    longest = max(lengths)
    assert len(lengths) == len(VARIED)
    assert all(shape[1] == longest and shape[0] <= 3 for _, shape in calls)  # one row length per call
    rows = sum(shape[0] for _, shape in calls)
    assert rows == len(first_fit_decreasing(lengths, longest, max_padded=PADDED_FACTOR * longest))
    ordered = sorted(lengths, reverse=True)
    padded_slots = sum(len(ordered[s : s + 3]) * ordered[s] for s in range(0, len(ordered), 3))
    assert rows * longest < padded_slots  # the long texts' rows take the short texts
    assert len(calls) < (len(VARIED) + 2) // 3
    for index in (0, 1, 2, len(VARIED) - 1):
        assert abs(packed[index] - model.encode(VARIED[index], packing=False)).max() <= 1e-5


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("arch", ["qwen3", "gpt2", "gemma"])
def test_packed_equals_padded_other_architectures(attach, arch, attention):
    model = attach(tiny_model(arch, attention, "multi_layer"))
    padded = model.encode(TEXTS, batch_size=7, packing=False)
    assert abs(padded - model.encode(TEXTS, batch_size=7, packing=True)).max() <= 1e-5


def test_packing_really_packs_and_a_leaky_mask_is_caught(attach):
    """The batch is packed into fewer rows than texts, and without the block-diagonal mask (texts
    seeing each other) the output changes: the equality tests above can fail."""
    model = attach(tiny_model("llama", "bidirectional", "mean"))
    rows = model.tokenizer(TEXTS)["input_ids"]
    packed = pack_batch(rows, model.tokenizer.pad_token_id, mode="dense", is_causal=False)
    assert packed.input_ids.shape[0] < len(TEXTS)
    with torch.no_grad():
        good = model(packed=packed).embeddings
        packed.attention_mask = torch.ones_like(packed.attention_mask)
        leaky = model(packed=packed).embeddings
    reference = model.encode(TEXTS, batch_size=len(TEXTS), packing=False, convert_to_tensor=True)
    assert (good - reference).abs().max() <= 1e-5
    assert (leaky - reference).abs().max() > 1e-3


def test_masking_utils_packed_position_ids():
    """Why packing builds its own mask: transformers detects packed texts from restarting position ids
    (attention_mask=None) in causal mode only; its bidirectional mask lets packed texts see each other."""
    first, second = [5, 6, 7, 8], [9, 10, 11]
    ids, positions = torch.tensor([first + second]), torch.tensor([[0, 1, 2, 3, 0, 1, 2]])
    results = {}
    for attention in ATTENTIONS:
        backbone = tiny_model("llama", attention, "mean").backbone
        with torch.no_grad():
            packed = backbone(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state[0, 4:]
            alone = backbone(input_ids=torch.tensor([second]), use_cache=False).last_hidden_state[0]
        results[attention] = float((packed - alone).abs().max())
    assert results["causal"] <= 1e-5, results


def test_packed_batch_is_exclusive_with_padded_inputs():
    model = tiny_model("llama", "causal", "mean")
    packed = pack_batch([[5, 6], [7]], pad_id=0, mode="dense", is_causal=True)
    with pytest.raises(ValueError, match="packed batch"):
        model(input_ids=packed.input_ids, packed=packed)


def test_encode_rejects_bad_packing_argument(attach):
    model = attach(tiny_model("llama", "causal", "mean"))
    with pytest.raises(TypeError, match="packing"):
        model.encode(TEXTS, packing="always")
    windowed = attach(tiny_model("mistral", "causal", "mean"))
    with pytest.raises(ValueError, match="window"):
        windowed.encode(TEXTS, packing=True)
    assert windowed.encode(TEXTS).shape[0] == len(TEXTS)  # default: falls back to padding


@pytest.mark.slow
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_flex_packed_equals_padded_on_cpu(attach, attention):
    """flex_attention compiles on the CPU in this torch (tens of seconds): the default packing path."""
    model = attach(tiny_model("llama", attention, "multi_layer", attn_implementation="flex_attention", head_dim=16))
    assert resolve_packing(model, None, 100) == "flex"
    padded = model.encode(VARIED, batch_size=4, packing=False)
    assert abs(padded - model.encode(VARIED, batch_size=4)).max() <= 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("pooling", ["last_token", "mean", "latent_attention", "multi_layer"])
def test_packed_equals_padded_on_cuda(attach, pooling, attention):
    torch.backends.cuda.matmul.allow_tf32 = False
    model = attach(tiny_model("llama", attention, pooling, attn_implementation="flex_attention", head_dim=16)).cuda()
    for texts, batch_size in ((TEXTS, 4), (VARIED, 4), (VARIED, 1), (VARIED[1], 4)):  # call-level packing
        model.backbone.config._attn_implementation = "flex_attention"
        padded = model.encode(texts, batch_size=batch_size, packing=False)
        assert abs(padded - model.encode(texts, batch_size=batch_size)).max() <= 1e-4
        model.backbone.config._attn_implementation = "sdpa"
        assert abs(padded - model.encode(texts, batch_size=batch_size, packing=True)).max() <= 1e-4


@pytest.mark.skipif(not (SHARED_DATA / "stsb").is_dir(), reason="needs the shared data")
def test_benchmark_smoke(tmp_path, smollm2_path):
    out = tmp_path / "perf.json"
    # target 2's peer is an optional extra: the floor environment (no sentence-transformers) measures the rest,
    # and asking it for target 2 must fail with the fix named instead of a bare ImportError
    with_peer = importlib.util.find_spec("sentence_transformers") is not None
    targets = {"1", "2", "3", "4"} if with_peer else {"1", "3", "4"}
    command = [sys.executable, str(ROOT / "benchmarks" / "encode_perf.py"), "--backbone", "tiny", "--num-texts", "12",
               "--repeats", "1", "--batch-size", "4", "--data-dir", str(SHARED_DATA), "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not with_peer:
        refused = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
        assert refused.returncode != 0 and "--targets 1,3,4" in refused.stderr, refused.stderr[-3000:]
    command += ["--targets", ",".join(sorted(targets))]
    result = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["targets"]) == targets
    for number in sorted(targets - {"3"}):
        section = report["targets"][number]
        assert set(section["workloads"]) == {"stsb", "scifact"}
        assert section["min_ratio"] > 0 and section["verdict"] in ("pass", "MISS")
        for rows in section["workloads"].values():
            assert all(row["tokens_per_s"] > 0 for row in rows.values())
    heads = set(report["targets"]["1"]["workloads"]["stsb"]) - {"raw_backbone"}
    assert heads == {"last_token", "mean", "weighted_mean", "latent_attention", "multi_layer",
                     "last_token, TOKENIZERS_PARALLELISM=false"}
    if with_peer:
        assert report["targets"]["2"]["sanity_max_abs_difference"] <= 1e-4
    memory = report["targets"]["3"]
    assert all(value > 0 for value in memory["peak_bytes"].values()) and memory["ratio"] > 0
    assert "| target |" in result.stdout


def test_benchmark_rejects_bad_targets(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "encode_perf.py"), "--backbone", "tiny",
                             "--targets", "1,7"], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode != 0 and "unknown" in result.stderr


def _reference_pad(rows, pad_id, side):
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def _reference_pack(rows, pad_id, row_texts, row_length):
    """Packed layout written out text by text (what the vectorised ``pack_batch`` must equal)."""
    lengths = [len(row) for row in rows]
    ids = torch.full((len(row_texts), row_length), pad_id, dtype=torch.long)
    positions = torch.zeros_like(ids)
    gather = torch.zeros((len(rows), max(lengths)), dtype=torch.long)
    for r, texts in enumerate(row_texts):
        start = 0
        for index in texts:
            n = lengths[index]
            ids[r, start : start + n] = torch.tensor(rows[index])
            positions[r, start : start + n] = torch.arange(n)
            gather[index, :n] = torch.arange(r * row_length + start, r * row_length + start + n)
            start += n
        positions[r, start:] = torch.arange(row_length - start)
    return ids, positions, gather


@pytest.mark.parametrize("side", ["right", "left"])
def test_pad_batch_matches_row_by_row_padding(side):
    from llm_embed.encoding import pad_batch

    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        lengths = torch.randint(0, 12, (int(torch.randint(1, 9, (1,), generator=generator)),), generator=generator)
        rows = [torch.randint(1, 900, (int(n),), generator=generator).tolist() for n in lengths]
        if not any(rows):
            rows[0] = [7]
        ids, mask = pad_batch(rows, 3, side)
        expected_ids, expected_mask = _reference_pad(rows, 3, side)
        assert ids.dtype == mask.dtype == torch.long
        assert torch.equal(ids, expected_ids) and torch.equal(mask, expected_mask)


@pytest.mark.parametrize("mode", ["flash", "dense"])
def test_pack_batch_matches_text_by_text_layout(mode):
    generator = torch.Generator().manual_seed(2)
    for _ in range(20):
        count = int(torch.randint(1, 12, (1,), generator=generator))
        rows = [torch.randint(1, 900, (int(torch.randint(1, 15, (1,), generator=generator)),),
                              generator=generator).tolist() for _ in range(count)]
        packed = pack_batch(rows, 0, mode=mode, is_causal=True)
        lengths = [len(row) for row in rows]
        if mode == "flash":
            row_texts, row_length = [list(range(count))], sum(lengths)
        else:
            row_texts, row_length = first_fit_decreasing(lengths, max(lengths)), max(lengths)
        ids, positions, gather = _reference_pack(rows, 0, row_texts, row_length)
        assert torch.equal(packed.input_ids, ids)
        assert torch.equal(packed.position_ids, positions)
        assert torch.equal(packed.gather_index, gather)
        assert torch.equal(packed.padded_mask, _reference_pad(rows, 0, "right")[1])
        if mode == "dense":  # block diagonal: same text (the trailing padding of a row is its own block)
            mask = packed.attention_mask[:, 0]
            for r, texts in enumerate(row_texts):
                start = 0
                for index in texts:
                    n = lengths[index]
                    block = mask[r, start : start + n, start : start + n]
                    assert torch.equal(block, torch.ones(n, n, dtype=torch.bool).tril())
                    assert not mask[r, start : start + n, :start].any()
                    start += n


def test_cpu_memory_counter_tracks_the_peak_of_live_storages():
    """The benchmark's CPU memory measure (target 3): bytes of tensor storages alive at once."""

    spec = importlib.util.spec_from_file_location("encode_perf", ROOT / "benchmarks" / "encode_perf.py")
    encode_perf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(encode_perf)
    x = torch.randn(256, 1024)
    counter = encode_perf.LiveTensorBytes()
    with counter:
        a = x * 2
        b = a * 2
        del a
        c = b * 2
        view = c[:10]  # a view adds no storage
        del b
    assert counter.peak == 2 * x.nbytes and counter.current == x.nbytes
    del c, view
    assert counter.current == 0


def test_packing_tokens_counts_the_small_pieces_as_encode_cuts_them():
    """benchmarks/packing_tokens.py's piece columns: one piece (a call of at most 2 batches) counts as the
    whole call; more pieces never pad less than sorting the whole call, and here (lengths that rise
    through the call) pad more."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("packing_tokens", ROOT / "benchmarks" / "packing_tokens.py")
        packing_tokens = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(packing_tokens)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    lengths = [1 + (i * 37) % 50 + i // 4 for i in range(40)]
    texts = ["x" * n for n in lengths]
    one = packing_tokens.count(texts[:8], lengths[:8], batch_size=4)
    assert one["pieces"] == [8]
    assert one["padded_tokens_small_pieces"] == one["padded_tokens"]
    assert one["packed_per_call_small_pieces"] == one["packed_per_call"]
    many = packing_tokens.count(texts, lengths, batch_size=4)
    assert many["pieces"] == [8, 16, 16]
    assert many["padded_tokens_small_pieces"][0] > many["padded_tokens"][0]
    assert many["packed_per_call_small_pieces"][0] >= many["packed_per_call"][0]
