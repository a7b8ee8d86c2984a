"""encode() refuses what it cannot embed faithfully: non-finite / unnormalisable vectors, bytes,
lone surrogates, non-string prompts; keeps eval mode across threads; tokenizes huge texts in bounded
time with the same ids as tokenizing them in full."""

import copy
import pickle
import threading
import time
import warnings

import numpy as np
import pytest
import torch

from llm_embed import LLMEmbeddingConfig, LLMEmbeddingModel
from llm_embed.encoding import TRUNCATION_SLACK, max_token_chars, tokenize_texts

from .conftest import tiny_backbone_config, tiny_model

TEXTS = ["a short one", "medium length text here", "x", "another text, with punctuation!"]


def with_tokenizer(model, tokenizer):
    model.tokenizer = tokenizer
    return model


# ---------------------------------------------------------------- non-finite / zero embeddings


@pytest.mark.parametrize(
    "pooling, parameter",
    [("latent_attention", "pooler.feed_forward.norm.weight"), ("mean", "backbone.norm.weight")],
)
def test_nan_weights_raise(tokenizer, pooling, parameter):
    model = with_tokenizer(tiny_model("llama", "bidirectional", pooling), tokenizer)
    with torch.no_grad():
        model.get_parameter(parameter)[0] = float("nan")
    for normalize in (True, False):
        with pytest.raises(ValueError, match=r"4 of 4 texts got no valid embedding \(4 with NaN") as info:
            model.encode(TEXTS, normalize=normalize)
        assert "texts 0, 1, 2, 3" in str(info.value) and "bfloat16" in str(info.value)
    with pytest.raises(ValueError, match="1 of 1 texts"):
        model.encode("one text", convert_to_tensor=True)


def test_only_the_bad_rows_are_named(tokenizer, monkeypatch):
    model = with_tokenizer(tiny_model("llama", "bidirectional", "mean"), tokenizer)
    original = model.embed

    def poison_one(input_ids, attention_mask, *args, **kwargs):
        out = original(input_ids, attention_mask, *args, **kwargs).clone()
        out[attention_mask.sum(-1) == 2] = float("inf")  # "x" + EOS: the third text
        return out

    monkeypatch.setattr(model, "embed", poison_one)
    with pytest.raises(ValueError, match=r"1 of 4 texts .*: texts 2\."):
        model.encode(TEXTS, batch_size=2)


def test_zero_vectors_raise_only_when_normalizing(tokenizer):
    model = with_tokenizer(tiny_model("llama", "bidirectional", "mean"), tokenizer)
    with torch.no_grad():
        model.backbone.norm.weight.zero_()  # every token state, hence every mean, is zero
    with pytest.raises(ValueError, match=r"4 of 4 texts .*4 all zeros, which cannot be L2-normalised"):
        model.encode(TEXTS)
    raw = model.encode(TEXTS, normalize=False)  # unnormalised zeros are vectors, if useless ones
    assert (raw == 0).all()


# ---------------------------------------------------------------- clearer input errors


@pytest.fixture()
def model(tokenizer):
    return with_tokenizer(tiny_model("llama", "bidirectional", "mean"), tokenizer)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda m: m.encode(b"abc"), TypeError, r"got bytes, which is not text; decode it first.*\.decode\('utf-8'\)"),
        (lambda m: m.encode(bytearray(b"abc")), TypeError, "got bytearray, which is not text"),
        (lambda m: m.encode(["ok", b"abc"]), TypeError, r"item 1 is bytes, not text.*decode\('utf-8'\)"),
        (lambda m: m.encode("a", normalize="no"), TypeError, "normalize must be True, False or None"),
        (lambda m: m.encode("a", normalize=1), TypeError, "normalize must be True, False or None"),
        (lambda m: m.encode("a", prompt=123), TypeError, "prompt must be a string"),
    ],
)
def test_bad_input(model, call, error, message):
    with pytest.raises(error, match=message):
        call(model)


def test_a_prompt_that_fills_max_seq_length_is_refused(model, tokenizer):
    """With the default 20-token query instruction and max_seq_length=16 every query embedded to one
    vector, with only the generic truncation warning; the training collator trained on such batches."""
    from llm_embed.data import ContrastiveDataCollator

    prompt_tokens = len(tokenizer(model.config.prompts["query"])["input_ids"])
    model.config.max_seq_length = prompt_tokens + 1  # EOS included: no room for a text token
    with pytest.raises(ValueError, match=f"the prompt 'Instruct: .* takes {prompt_tokens} tokens, and "
                                         f"max_seq_length={prompt_tokens + 1} leaves {prompt_tokens}"):
        model.encode_query(["where is the cat", "stock prices today"])
    with pytest.raises(ValueError, match="no token of any text would remain"):
        ContrastiveDataCollator(tokenizer, model.config)
    model.config.max_seq_length = prompt_tokens + 2  # one text token: allowed, and the texts differ
    queries = model.encode_query(["where is the cat", "stock prices today"])
    assert not np.allclose(queries[0], queries[1])
    model.config.append_eos = False
    model.config.max_seq_length = prompt_tokens
    with pytest.raises(ValueError, match=f"leaves {prompt_tokens} for prompt and text: no token"):
        model.encode(["a"], prompt_name="query")
    assert model.encode(["a"]).shape == (1, model.config.embedding_dim)  # no prompt, no check


def test_a_device_this_torch_lacks_is_named(model):
    """torch's own AssertionError ("Torch not compiled with CUDA enabled") named neither the call nor
    the devices at hand."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for device in ("cuda", "cuda:0", "gpu"):
        with pytest.raises(ValueError, match=rf"encode\(device='{device}'\): this torch cannot place the model "
                                             r"there .*; devices here: cpu"):
            model.encode(["a"], device=device)
    assert model.encode(["a"], device="cpu").shape == (1, model.config.embedding_dim)


def test_prompt_set_to_none_is_a_clear_error(model):
    model.config.prompts["query"] = None  # mutated in place, after the config validated it
    with pytest.raises(TypeError,
                       match=r"prompt 'query' in config\.prompts is None .*must be a string.*'' for no prefix"):
        model.encode("a", prompt_name="query")
    model.config.default_prompt_name = "query"
    with pytest.raises(TypeError, match="prompt 'query'"):
        model.encode("a")


def test_a_default_prompt_removed_from_prompts_is_a_clear_error(model):
    """With default_prompt_name="query" and "query" popped from config.prompts (a plain dict, edited
    after the config checked it), encode embedded every text unprompted, while save_pretrained refused
    the same config. The rule that a missing "query" / "document" means no prompt is for a prompt_name
    the caller passes (sentence-transformers'), not for the model's own default."""
    model.config.default_prompt_name = "query"
    model.config.prompts.pop("query")
    with pytest.raises(ValueError, match=r"default_prompt_name is 'query' but config\.prompts has no 'query'.*"
                                         r"default_prompt_name = None"):
        model.encode(["a"])
    assert model.encode(["a"], prompt_name="query").shape[0] == 1  # named by the caller: no prompt, as before


def test_lone_surrogate_is_located(model):
    with pytest.raises(ValueError, match=r"text 1, character 3 is a lone surrogate '\\ud800'") as info:
        model.encode(["fine", "abc\ud800def", "also fine"])
    assert "text.encode('utf-8', 'replace')" in str(info.value) and "surrogatepass" in str(info.value)
    assert info.value.__cause__ is not None  # the tokenizer's own error is kept as the cause
    with pytest.raises(ValueError, match="text 0, character 2 is a lone surrogate"):
        model.encode("ab\udc80", prompt_name="query")  # positions count in the text, not the prompt
    with pytest.raises(ValueError, match=r"the prompt 'q\\udc80: ', character 1"):
        model.encode("ok", prompt="q\udc80: ")


def test_surrogate_past_the_cut_of_a_long_text_is_harmless(model, tokenizer):
    long_text = "word " * 20_000 + "\ud800"  # truncated long before the surrogate
    model.config.max_seq_length = 16
    with pytest.warns(UserWarning, match="1 of 1 texts were longer"):
        vector = model.encode(long_text)
    assert vector.shape == (32,)


def test_other_tokenizer_errors_are_reraised_as_is(model, monkeypatch):
    tokenizer = model.tokenizer
    boom = RuntimeError("tokenizer broke")

    class Broken(type(tokenizer)):
        def __call__(self, *args, **kwargs):
            raise boom

    monkeypatch.setattr(tokenizer, "__class__", Broken)
    with pytest.raises(RuntimeError, match="tokenizer broke") as info:
        model.encode("fine text")
    assert info.value is boom


# ---------------------------------------------------------------- train/eval switch under threads


def dropout_model(tokenizer):
    """A tiny Llama whose attention drops half its weights in training mode: any forward pass run in
    training mode gives different vectors."""
    torch.manual_seed(0)
    backbone = tiny_backbone_config("llama")
    backbone.attention_dropout = 0.5
    config = LLMEmbeddingConfig(backbone_config=backbone, attention="bidirectional", pooling="mean",
                                attn_implementation="eager")
    return with_tokenizer(LLMEmbeddingModel(config), tokenizer)


def test_concurrent_encodes_keep_eval_mode(tokenizer):
    model = dropout_model(tokenizer)
    groups = [[f"thread {t} text {i} " + "word " * (i * 7 % 23) for i in range(8)] for t in range(4)]
    model.train()
    expected = [model.encode(group, batch_size=2, convert_to_tensor=True) for group in groups]
    assert model.training
    with torch.no_grad():  # sanity: dropout really changes the vectors in training mode
        batch = tokenizer(groups[0][:1], return_tensors="pt")
        assert not torch.equal(model(**batch).embeddings[0], expected[0][0])

    rounds = 5
    barrier = threading.Barrier(len(groups))
    results: dict[int, list[torch.Tensor]] = {t: [] for t in range(len(groups))}
    errors: list[BaseException] = []

    def worker(t):
        try:
            barrier.wait()
            for _ in range(rounds):
                results[t].append(model.encode(groups[t], batch_size=2, convert_to_tensor=True))
        except BaseException as err:  # reported by the main thread below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(len(groups))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for t, outputs in results.items():
        assert len(outputs) == rounds
        for output in outputs:
            assert torch.equal(output, expected[t])
    assert model.training and all(module.training for module in model.modules())


def test_a_call_that_ends_first_does_not_switch_dropout_on_for_another(tokenizer):
    """The race made deterministic: call A (which found the model in training mode) is inside its
    forward pass when call B starts; B waits inside its own forward pass until A has returned. A
    leaving must not put the model back in training mode under B."""
    model = dropout_model(tokenizer)
    texts = {"A": ["text of call A", "another one of A"], "B": ["text of call B"]}
    model.train()
    expected = {name: model.encode(group, convert_to_tensor=True) for name, group in texts.items()}
    a_inside, b_inside, a_done = threading.Event(), threading.Event(), threading.Event()
    paused, results, errors = set(), {}, []

    def pause(module, args):
        name = threading.current_thread().name
        if name in paused:
            return
        paused.add(name)
        if name == "A":
            a_inside.set()
            assert b_inside.wait(timeout=60), "call B did not start"
        else:
            b_inside.set()
            assert a_done.wait(timeout=60), "call A did not finish"

    def run(name):
        try:
            if name == "B":
                assert a_inside.wait(timeout=60), "call A did not start"
            results[name] = model.encode(texts[name], convert_to_tensor=True)
        except BaseException as err:  # reported by the main thread below
            errors.append(err)
        finally:
            (a_done if name == "A" else b_inside).set()

    handle = model.backbone.register_forward_pre_hook(pause)
    try:
        threads = [threading.Thread(target=run, args=(name,), name=name) for name in texts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        handle.remove()
    assert not errors, errors
    assert torch.equal(results["A"], expected["A"])
    assert torch.equal(results["B"], expected["B"])
    assert model.training


class PausedEncode:
    """An ``encode`` call in its own thread, held inside its first forward pass until released, so that
    the main thread can act while it runs (deterministic, no timing)."""

    def __init__(self, model, texts):
        self.inside, self.release, self.result, self.errors = threading.Event(), threading.Event(), None, []
        self.thread = threading.Thread(target=self.run, args=(model, texts), name="paused-encode")
        self.handle = model.backbone.register_forward_pre_hook(self.pause)

    def pause(self, module, args):
        if threading.current_thread() is self.thread and not self.inside.is_set():
            self.inside.set()
            assert self.release.wait(timeout=60), "never released"

    def run(self, model, texts):
        try:
            self.result = model.encode(texts, batch_size=2, convert_to_tensor=True)
        except BaseException as err:  # reported by the main thread
            self.errors.append(err)

    def __enter__(self):
        self.thread.start()
        assert self.inside.wait(timeout=60), "the encode call did not start"
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.thread.join(timeout=60)
        self.handle.remove()
        assert not self.errors, self.errors


def in_thread(function) -> threading.Thread:
    thread = threading.Thread(target=function)
    thread.start()
    return thread


def test_train_from_another_thread_waits_for_running_encodes(tokenizer):
    """``model.train()`` while another thread encoded switched dropout on under its remaining batches
    (vectors off by up to 0.17 on a tiny GPT-2, silently): it now waits for the call to end."""
    model = dropout_model(tokenizer).eval()
    expected = model.encode(TEXTS, batch_size=2, convert_to_tensor=True)
    with PausedEncode(model, TEXTS) as call:
        switching = in_thread(model.train)
        switching.join(timeout=1.0)
        assert switching.is_alive() and not model.training  # waiting, not yet switched
    switching.join(timeout=60)
    assert torch.equal(call.result, expected)
    assert model.training and all(module.training for module in model.modules())


def test_eval_from_another_thread_is_kept_when_encodes_end(tokenizer):
    """The last encode to end switched the modules it found in training mode back, over a ``model.eval()``
    another thread made meanwhile: the model went on in training mode (dropout on) for everything after."""
    model = dropout_model(tokenizer).train()
    with PausedEncode(model, TEXTS):
        in_thread(model.eval).join(timeout=60)  # does not wait
        assert not model.training
    assert not any(module.training for module in model.modules())


def test_a_training_pass_and_an_encode_in_two_threads_keep_their_own_modes(tokenizer):
    """A loop that called ``model.train()`` once ran its next forward in eval mode while another thread
    encoded (no dropout, silently); and an encode starting during a training forward switched its dropout
    off half-way. Each now waits for the other."""
    model = dropout_model(tokenizer).eval()
    expected = model.encode(TEXTS, batch_size=2, convert_to_tensor=True)
    batch = tokenizer(TEXTS[:2], return_tensors="pt", padding=True)
    model.train()
    seen: list[bool] = []
    record = lambda module, args: seen.append(module.training) if threading.current_thread().name == "step" else None
    handle = model.backbone.layers[-1].register_forward_pre_hook(record)
    try:
        with PausedEncode(model, TEXTS) as call:  # holds the model in eval mode
            step = threading.Thread(target=lambda: model(**batch), name="step")
            step.start()
            step.join(timeout=1.0)
            assert step.is_alive() and not seen  # waits for the encode
        step.join(timeout=60)
        assert seen == [True] and torch.equal(call.result, expected)

        entered = threading.Event()
        leave = threading.Event()

        def long_step(module, args):
            if threading.current_thread().name == "step":
                entered.set()
                assert leave.wait(timeout=60)

        pause = model.backbone.layers[0].register_forward_pre_hook(long_step)
        step = threading.Thread(target=lambda: model(**batch), name="step")
        step.start()
        assert entered.wait(timeout=60)
        results = []
        encoding = in_thread(lambda: results.append(model.encode(TEXTS, batch_size=2, convert_to_tensor=True)))
        encoding.join(timeout=1.0)
        assert encoding.is_alive() and model.training  # the training pass keeps its dropout
        leave.set()
        step.join(timeout=60)
        encoding.join(timeout=60)
        pause.remove()
        assert seen == [True, True] and torch.equal(results[0], expected) and model.training
    finally:
        handle.remove()


def test_eval_model_is_not_touched_and_submodule_modes_are_kept(tokenizer, monkeypatch):
    model = dropout_model(tokenizer)
    model.eval()

    def no_switch(mode=True):
        raise AssertionError("encode switched the mode of a model already in eval mode")

    monkeypatch.setattr(model, "train", no_switch)  # Module.eval() calls train(False) too
    model.encode(TEXTS)
    monkeypatch.undo()

    model.train()
    model.backbone.eval()  # e.g. a frozen backbone kept without dropout while the head trains
    model.encode(TEXTS)
    assert model.training and not model.backbone.training
    assert not any(module.training for module in model.backbone.modules())


def test_model_stays_copyable_and_picklable(model):
    model.train()
    model.encode("hello")
    copied = copy.deepcopy(model)
    assert copied.training
    # serialisable (weights are only ever loaded from safetensors; deepcopy above restores through
    # the same __getstate__/__setstate__ that unpickling would use)
    assert len(pickle.dumps(model.cpu())) > 0
    assert torch.equal(copied.backbone.norm.weight, model.backbone.norm.weight)


# ---------------------------------------------------------------- huge texts: bounded tokenization


def reference_ids(tokenizer, texts, max_seq_length, append_eos):
    """tokenize_texts without the character cap: the whole text through the tokenizer, then truncated."""
    eos = tokenizer.eos_token_id
    budget = max_seq_length - 1 if append_eos else max_seq_length
    out = []
    for row in tokenizer(texts, add_special_tokens=True, truncation=False, return_attention_mask=False)["input_ids"]:
        if append_eos and row and row[-1] == eos:
            row = row[:-1]
        row = row[:budget]
        out.append(row + [eos] if append_eos else row)
    return out


def tokens_of(tokenizer, n):
    """A text of exactly ``n`` tokens (without special tokens)."""
    text = "word " * n
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n]
    return tokenizer.decode(ids)


def tricky_texts(tokenizer, max_seq_length, cap):
    """Texts short and long, at and around the limit, and long ones whose cut falls in runs that BPE
    merges into long tokens (spaces, newlines, punctuation, '#'), in multi-byte characters (emoji, CJK,
    accents) and in one unbroken word."""
    room = cap + 1000
    near = [tokens_of(tokenizer, max_seq_length + d) for d in (-3, -2, -1, 0, 1, 2)]
    runs = [
        " " * room, "\n" * room, "\n  " * (room // 3), "!" * room, "#" * room, "-=" * room, "." * room,
        "😀" * room, "👩‍👩‍👧‍👦" * (room // 4), "中文字符测试" * (room // 6), "日本語のテキスト" * (room // 8),
        "é" * room, "a" * room, "ab1" * room, "0123456789" * (room // 10), "\t \t" * room,
    ]
    mixed = [
        "lead " + " " * (cap - 3) + "tail",  # cut inside a run of spaces
        "x" * (cap - 1) + "yz" * 50,  # cut inside one long word
        "hello world " * (room // 12) + "😀" * 10,
        ("The quick brown fox jumps over the lazy dog. " * 400)[: cap + 7],
        "数学 math 🧮 " * (room // 8),
    ]
    return ["a short one", "", "x", *near, *runs, *mixed]


@pytest.mark.parametrize("max_seq_length, append_eos", [(8, True), (32, True), (32, False), (100, True)])
def test_capped_ids_equal_full_tokenization(tokenizer, max_seq_length, append_eos):
    cap = (max_seq_length + TRUNCATION_SLACK) * max_token_chars(tokenizer)
    texts = [t for t in tricky_texts(tokenizer, max_seq_length, cap) if t or append_eos]
    assert sum(len(t) > cap for t in texts) >= 15  # most long ones are cut
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = tokenize_texts(tokenizer, texts, max_seq_length, append_eos)
    expected = reference_ids(tokenizer, texts, max_seq_length, append_eos)
    for text, row, want in zip(texts, got, expected):
        assert row == want, repr(text[:40])


def test_capped_ids_with_a_prompt(tokenizer):
    cap = (16 + TRUNCATION_SLACK) * max_token_chars(tokenizer)
    prompt = "Represent this sentence for searching relevant passages: "
    texts = ["short", " " * (cap - len(prompt) + 1), "prose goes on. " * cap, "x" * (cap - len(prompt))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = tokenize_texts(tokenizer, texts, 16, True, prefix=prompt)
    assert got == reference_ids(tokenizer, [prompt + t for t in texts], 16, True)


def recording(tokenizer):
    """A copy of ``tokenizer`` that records the length of every text it is called on."""
    seen: list[int] = []
    copy_ = copy.deepcopy(tokenizer)
    base = type(copy_)

    def call(self, text, *args, **kwargs):
        seen.extend(len(t) for t in ([text] if isinstance(text, str) else text))
        return base.__call__(self, text, *args, **kwargs)

    copy_.__class__ = type("Recording" + base.__name__, (base,), {"__call__": call})
    return copy_, seen


def test_huge_text_is_cut_before_tokenizing(tokenizer):
    spy, seen = recording(tokenizer)
    huge = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * (5_000_000 // 57)
    assert len(huge) > 4_900_000
    max_token_chars(spy)  # the vocabulary scan is a once-per-tokenizer cost, not this call's
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="1 of 2 texts were longer than max_seq_length=32") as record:
        ids = tokenize_texts(spy, [huge, "short"], 32, True)
    elapsed = time.perf_counter() - start
    assert len(record) == 1
    cap = (32 + TRUNCATION_SLACK) * max_token_chars(tokenizer)
    assert seen and max(seen) <= cap < 10_000
    assert elapsed < 1.5, f"tokenizing a 5 MB text took {elapsed:.2f}s"
    # ordinary prose: the first tokens are those of the whole text
    assert ids[0] == reference_ids(tokenizer, [huge[:100_000]], 32, True)[0]
    assert ids[1] == reference_ids(tokenizer, ["short"], 32, True)[0]


def test_huge_text_through_encode(model, tokenizer):
    model.config.max_seq_length = 32
    huge = "Lorem ipsum dolor sit amet. " * (5_000_000 // 28)
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="max_seq_length=32"):
        vector = model.encode(huge)
    assert time.perf_counter() - start < 1.5
    prefix = tokenizer.decode(tokenizer(huge[:10_000], add_special_tokens=False)["input_ids"][:31])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(torch.from_numpy(vector), torch.from_numpy(model.encode(prefix)), atol=1e-5, rtol=0)


def test_tokenizer_breaking_the_bound_falls_back_to_full_text(tokenizer):
    """A tokenizer whose normalizer drops characters: the cut prefix yields too few tokens, so the text
    is tokenized in full and the ids stay exact."""
    from tokenizers import normalizers

    dropping = copy.deepcopy(tokenizer)
    dropping.backend_tokenizer.normalizer = normalizers.Replace("~", "")
    spy, seen = recording(dropping)
    cap = (8 + TRUNCATION_SLACK) * max_token_chars(spy)
    text = "~" * (2 * cap) + "the words after the run of dropped characters go on and on and on"
    with pytest.warns(UserWarning, match="1 of 1 texts"):
        ids = tokenize_texts(spy, [text], 8, True)
    assert ids == reference_ids(dropping, [text], 8, True)
    assert seen == [cap, len(text)]  # the cut prefix, then the whole text


def test_vocabulary_bound_is_recomputed_when_tokens_are_added(tokenizer):
    grown = copy.deepcopy(tokenizer)
    before = max_token_chars(grown)
    grown.add_tokens(["<" + "z" * (before + 20) + ">"])
    assert max_token_chars(grown) == before + 22


# ---------------------------------------------------------------- the tokenizer follows the config


def test_append_eos_false_on_a_loaded_model(tokenizer, tmp_path):
    """A checkpoint saved with append_eos=True carries a tokenizer that appends EOS; loading it with
    append_eos=False (or setting it later) must give the ids of a model built with append_eos=False."""
    from transformers import AutoTokenizer

    saved = with_tokenizer(tiny_model("llama", "bidirectional", "mean"), tokenizer)
    saved.save_pretrained(tmp_path / "model")
    reference = with_tokenizer(tiny_model("llama", "bidirectional", "mean", append_eos=False), tokenizer)
    want = tokenizer(TEXTS)["input_ids"]  # SmolLM2's own tokenizer adds no special tokens
    assert reference.tokenizer(TEXTS)["input_ids"] == want

    loaded = LLMEmbeddingModel.from_pretrained(tmp_path / "model", append_eos=False)
    assert loaded.tokenizer(TEXTS)["input_ids"] == want
    np.testing.assert_allclose(loaded.encode(TEXTS), reference.encode(TEXTS), atol=1e-6)
    with pytest.raises(ValueError, match="produced no tokens"):
        loaded.encode("")

    saved.config.append_eos = False  # after the tokenizer was attached
    assert saved.tokenizer(TEXTS)["input_ids"] == want
    np.testing.assert_allclose(saved.encode(TEXTS), reference.encode(TEXTS), atol=1e-6)
    saved.save_pretrained(tmp_path / "no-eos")
    assert AutoTokenizer.from_pretrained(tmp_path / "no-eos")(TEXTS)["input_ids"] == want
    saved.config.append_eos = True  # and back
    assert saved.tokenizer(TEXTS)["input_ids"] == [ids + [tokenizer.eos_token_id] for ids in want]


def test_append_eos_false_keeps_the_prefix(tokenizer):
    """A tokenizer that wraps texts in BOS ... EOS loses the EOS only, both ways round."""
    from tokenizers.processors import TemplateProcessing

    wrapping = copy.deepcopy(tokenizer)
    bos, eos = wrapping.bos_token, wrapping.eos_token
    bos_id, eos_id = wrapping.bos_token_id, wrapping.eos_token_id
    wrapping.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} $B:1 {eos}:1", special_tokens=[(bos, bos_id), (eos, eos_id)])
    plain = tokenizer("hello world")["input_ids"]
    model = with_tokenizer(tiny_model("llama", "bidirectional", "mean", append_eos=False), wrapping)
    assert model.tokenizer("hello world")["input_ids"] == [bos_id, *plain]
    assert wrapping("hello world")["input_ids"] == [bos_id, *plain, eos_id]  # the caller's object is unchanged
    model.config.append_eos = True
    assert model.tokenizer("hello world")["input_ids"] == [bos_id, *plain, eos_id]


def test_tokenizer_follows_config_changes(tokenizer, tmp_path):
    """Settings changed after the tokenizer was attached reach the tokenizer the model uses and saves,
    so that model(**AutoTokenizer(saved folder)(...)) still equals encode."""
    from transformers import AutoTokenizer

    model = with_tokenizer(tiny_model("llama", "bidirectional", "mean"), tokenizer)
    attached = model.tokenizer
    assert model.tokenizer is attached  # unchanged config: no new copy per call
    model.config.max_seq_length = 8
    model.config.padding_side = "left"
    current = model.tokenizer
    assert (current.model_max_length, current.padding_side) == (8, "left")
    assert model.tokenizer is current
    model.save_pretrained(tmp_path / "model")
    saved = AutoTokenizer.from_pretrained(tmp_path / "model")
    assert (saved.model_max_length, saved.padding_side) == (8, "left")
    texts = ["one two three four five six seven eight nine ten eleven twelve", "short"]
    batch = saved(texts, padding=True, truncation=True, return_tensors="pt")
    assert batch["attention_mask"].sum(1).tolist() == [8, 2]
    with torch.no_grad():
        forward = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).embeddings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the truncation warning
        encoded = model.encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(forward, encoded, atol=1e-5, rtol=0)
