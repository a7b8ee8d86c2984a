"""encode(): order, sorting, prompts, EOS, truncation, output types, bad input."""

import warnings

import numpy as np
import pytest
import torch

from .conftest import tiny_model

TEXTS = [
    "a short one",
    "a much longer text that goes on for quite a few more tokens than the others in this list",
    "medium length text here",
    "x",
]


@pytest.fixture()
def model(tokenizer):
    model = tiny_model("llama", "bidirectional", "mean")
    model.tokenizer = tokenizer
    return model


def one_by_one(model, texts, **kwargs):
    return np.stack([model.encode([t], **kwargs)[0] for t in texts])


def test_order_is_restored_and_batching_changes_nothing(model):
    together = model.encode(TEXTS, batch_size=3)
    assert together.shape == (4, 32) and together.dtype == np.float32
    np.testing.assert_allclose(together, one_by_one(model, TEXTS), atol=1e-5)
    reordered = model.encode(TEXTS[::-1], batch_size=2)
    np.testing.assert_allclose(reordered[::-1], together, atol=1e-5)


def test_batches_are_sorted_by_length(model):
    seen = []
    original = model.forward

    def spy(input_ids=None, attention_mask=None, **kwargs):
        seen.append(attention_mask.sum(-1).tolist())
        return original(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    model.forward = spy
    model.encode(TEXTS, batch_size=2)
    lengths = [n for batch in seen for n in batch]
    assert lengths == sorted(lengths, reverse=True)


def test_eos_appended_and_prompts_applied(model, tokenizer):
    captured = []
    original = model.forward

    def spy(input_ids=None, attention_mask=None, **kwargs):
        captured.append(input_ids[0][attention_mask[0].bool()].tolist())
        return original(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    model.forward = spy
    model.encode("hello world", prompt_name="query")
    model.encode("hello world", prompt="Represent: ")
    model.encode("hello world")
    query, custom, plain = captured
    assert query[-1] == tokenizer.eos_token_id
    assert query[:-1] == tokenizer(model.config.prompts["query"] + "hello world")["input_ids"]
    assert custom[:-1] == tokenizer("Represent: hello world")["input_ids"]
    assert plain[:-1] == tokenizer("hello world")["input_ids"]


def test_default_prompt_name(tokenizer):
    model = tiny_model("llama", "bidirectional", "mean", default_prompt_name="query")
    model.tokenizer = tokenizer
    np.testing.assert_allclose(model.encode("abc"), model.encode("abc", prompt_name="query"), atol=1e-6)
    assert not np.allclose(model.encode("abc"), model.encode("abc", prompt=""), atol=1e-4)


def test_single_string_tensor_and_normalize(model):
    vector = model.encode("hello")
    assert vector.shape == (32,)
    assert abs(np.linalg.norm(vector) - 1) < 1e-5
    raw = model.encode("hello", normalize=False)
    assert abs(np.linalg.norm(raw) - 1) > 1e-3
    np.testing.assert_allclose(raw / np.linalg.norm(raw), vector, atol=1e-5)
    tensor = model.encode(["hello", "there"], convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (2, 32)


def test_truncation_warns_once(model, tokenizer):
    model.config.max_seq_length = 8
    long_texts = ["word " * 50, "another " * 40, "short"]
    with pytest.warns(UserWarning, match="2 of 3 texts were longer than max_seq_length=8") as record:
        out = model.encode(long_texts)
    assert len([w for w in record if "max_seq_length" in str(w.message)]) == 1
    # the truncated text is embedded as its first 7 tokens + EOS
    first_seven = tokenizer.decode(tokenizer("word " * 50)["input_ids"][:7])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(out[0], model.encode(first_seven), atol=1e-5)


def test_encode_restores_training_mode(model):
    model.train()
    model.encode("hello")
    assert model.training


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda m: m.encode([]), ValueError, "empty list"),
        (lambda m: m.encode(None), TypeError, "string or a list of strings"),
        (lambda m: m.encode(["ok", 3]), TypeError, "item 1 is int"),
        (lambda m: m.encode(42), TypeError, "string or a list of strings"),
        (lambda m: m.encode("a", prompt_name="nope"), ValueError, "unknown prompt_name 'nope'"),
        (lambda m: m.encode("a", prompt_name="query", prompt="x"), ValueError, "either prompt_name or prompt"),
        (lambda m: m.encode("a", batch_size=0), ValueError, "batch_size must be a positive integer"),
    ],
)
def test_bad_input(model, call, error, message):
    with pytest.raises(error, match=message):
        call(model)


def test_no_tokenizer_is_a_clear_error():
    model = tiny_model("llama", "causal", "mean")
    with pytest.raises(ValueError, match="no tokenizer"):
        model.encode("hello")


def test_no_misleading_too_long_log_from_encode(model):
    """transformers logs "Token indices sequence length is longer than the specified maximum ... will
    result in indexing errors" for a long text; encode truncates it, so not from encode; a direct call
    of the tokenizer still gets it."""
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    model.tokenizer.deprecation_warnings.pop("sequence-length-is-longer-than-the-specified-maximum", None)
    root = logging.getLogger("transformers")
    root.addHandler(handler)
    try:
        with pytest.warns(UserWarning, match="1 of 1 texts were longer"):
            model.encode("word " * 600)
        assert not [r for r in records if "Token indices sequence length" in r.getMessage()]
        model.tokenizer("word " * 600)
        assert [r for r in records if "Token indices sequence length" in r.getMessage()]
    finally:
        root.removeHandler(handler)


def test_truncation_warning_points_at_the_callers_line(model):
    """Python shows a warning once per location: pointed into llm_embed, the warning of a second call
    site would be hidden."""
    from pathlib import Path

    model.config.max_seq_length = 32  # room for the 20-token query prompt and a little text
    for call in (model.encode, model.encode_query, model.encode_document):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call(["word " * 50])
        assert [(Path(w.filename).name, w.lineno) for w in caught] == [(Path(__file__).name, CALL_LINE)]


def _call_line() -> int:
    """The line of ``call(["word " * 50])`` in the test above."""
    import inspect

    source, start = inspect.getsourcelines(test_truncation_warning_points_at_the_callers_line)
    return start + next(i for i, line in enumerate(source) if 'call(["word " * 50])' in line)


CALL_LINE = _call_line()
