"""``encode`` drops in where sentence-transformers' is used: the same user code, run against a
``SentenceTransformer`` and an ``LLMEmbeddingModel`` loaded from one saved folder, gets the same types,
shapes, normalisation, query / document prompts and values. Plus the arguments refused rather than
ignored, and the helpers shared by encode, the collator, the sentence-transformers module and mteb."""

import ast
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_embed import LLMEmbeddingModel
from llm_embed.encoding import resolve_pad_id
from llm_embed.tokenizer_setup import configure_eos

from .conftest import tiny_model

TEXTS = ["how do I reset my card?", "x", "a much longer text about many different things and then some more"]


def user_code(model) -> dict:
    """Code written against sentence-transformers' API (its argument names only)."""
    return {
        "one": model.encode("how do I reset my card?"),
        "many": model.encode(TEXTS),
        "tensor": model.encode(TEXTS, convert_to_tensor=True),
        "tensor_wins": model.encode(TEXTS, convert_to_numpy=True, convert_to_tensor=True),
        "one_tensor": model.encode("x", convert_to_tensor=True),
        "list": model.encode(TEXTS, convert_to_numpy=False),
        "one_no_numpy": model.encode("x", convert_to_numpy=False),
        "normalized": model.encode(TEXTS, normalize_embeddings=True),
        "not_asked": model.encode(TEXTS, normalize_embeddings=False),
        "plain": model.encode(TEXTS, prompt=""),
        "query": model.encode_query(TEXTS),
        "document": model.encode_document(TEXTS),
        "query_named": model.encode(TEXTS, prompt_name="query"),
        "query_literal": model.encode_query(TEXTS, prompt="custom: "),
        "document_named": model.encode_document(TEXTS, prompt_name="query"),
        "one_query": model.encode_query("a query", convert_to_tensor=True),
        "spelled_out": model.encode(TEXTS, batch_size=2, show_progress_bar=False, output_value="sentence_embedding",
                                    precision="float32", device="cpu", convert_to_numpy=True),
        # sentence-transformers 6.2's name of the first argument, numpy texts and batch sizes
        "inputs": model.encode(inputs=TEXTS),
        "inputs_query": model.encode_query(inputs=TEXTS),
        "inputs_document": model.encode_document(inputs=TEXTS),
        "numpy_texts": model.encode(np.array(TEXTS)),
        "numpy_batch_size": model.encode(TEXTS, batch_size=np.int64(2)),
        "precision_none": model.encode(TEXTS, precision=None),  # sentence-transformers reads None as float32
        "numpy_bool": model.encode(TEXTS, normalize_embeddings=np.True_),
        # every model has a "document" prompt, "" where config.prompts has none (raw_query_only)
        "document_name": model.encode(TEXTS, prompt_name="document"),
        "similarity": model.similarity(model.encode(TEXTS), model.encode_query(TEXTS[:2])),
        "similarity_of_lists": model.similarity(model.encode(TEXTS, convert_to_numpy=False), model.encode(TEXTS[0])),
        "similarity_pairwise": model.similarity_pairwise(model.encode(TEXTS), model.encode_query(TEXTS)),
    }


def describe(value):
    """Type, dtype and shape of a result, element-wise for lists."""
    if isinstance(value, list):
        return ("list", [describe(item) for item in value])
    return (type(value).__name__, str(value.dtype), tuple(value.shape))


def as_array(value) -> np.ndarray:
    if isinstance(value, list):
        return np.stack([item.numpy() for item in value])
    return value.numpy() if isinstance(value, torch.Tensor) else value


def unit_rows(array: np.ndarray) -> bool:
    return bool(np.allclose(np.linalg.norm(np.atleast_2d(array), axis=-1), 1, atol=1e-5))


@pytest.fixture(params=["defaults", "raw_query_only"])
def both(request, tokenizer, tmp_path):
    """(LLMEmbeddingModel, SentenceTransformer) of one saved folder: the defaults (normalising, query
    and document prompts, no default prompt), or raw vectors with only a query prompt that is also
    the default prompt (so that encode_document must not fall back to it)."""
    SentenceTransformer = pytest.importorskip(
        "sentence_transformers", reason="the comparison needs sentence-transformers (the floor venv has none)"
    ).SentenceTransformer

    if request.param == "defaults":
        model = tiny_model("llama", "bidirectional", "mean")
    else:
        model = tiny_model("llama", "bidirectional", "mean", normalize=False, prompts={"query": "q: "},
                           default_prompt_name="query")
    model.tokenizer = tokenizer
    model.save_pretrained(tmp_path / "model")
    loaded = LLMEmbeddingModel.from_pretrained(tmp_path / "model")
    return loaded, SentenceTransformer(str(tmp_path / "model"), trust_remote_code=True), request.param


def test_same_user_code_same_results(both):
    ours, st, kind = both
    mine, theirs = user_code(ours), user_code(st)
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert describe(mine[key]) == describe(theirs[key]), key
        # sentence-transformers batches by characters, encode by tokens: equal up to batch invariance
        np.testing.assert_allclose(as_array(mine[key]), as_array(theirs[key]), rtol=1e-5, atol=1e-6, err_msg=key)

    # what the shared code saw, spelled out once (on our side; the other side is equal)
    assert describe(mine["one"]) == ("ndarray", "float32", (32,))
    assert describe(mine["many"]) == ("ndarray", "float32", (3, 32))
    assert describe(mine["tensor"]) == describe(mine["tensor_wins"]) == ("Tensor", "torch.float32", (3, 32))
    assert describe(mine["one_tensor"]) == describe(mine["one_no_numpy"]) == ("Tensor", "torch.float32", (32,))
    assert describe(mine["list"]) == ("list", [("Tensor", "torch.float32", (32,))] * 3)
    assert unit_rows(mine["normalized"])
    assert unit_rows(mine["not_asked"]) == (kind == "defaults")  # False adds nothing; the model decides
    np.testing.assert_allclose(mine["query"], mine["query_named"], atol=1e-6)
    np.testing.assert_allclose(mine["document_named"], mine["query_named"], atol=1e-6)  # explicit name wins
    assert not np.allclose(mine["query"], mine["plain"], atol=1e-4)
    assert not np.allclose(mine["query_literal"], mine["query"], atol=1e-4)
    if kind == "defaults":  # the document prompt is "": documents embed as plain text
        np.testing.assert_allclose(mine["document"], mine["plain"], atol=1e-6)
        np.testing.assert_allclose(mine["many"], mine["plain"], atol=1e-6)
    else:  # no document prompt: none, not the default (query) prompt that plain encode uses
        np.testing.assert_allclose(mine["document"], mine["plain"], atol=1e-6)
        np.testing.assert_allclose(mine["many"], mine["query"], atol=1e-6)


def test_the_rest_of_the_sentence_transformers_surface(both):
    """What code written for a SentenceTransformer reads besides encode (before: AttributeError)."""
    ours, st, _ = both
    assert ours.get_embedding_dimension() == ours.get_sentence_embedding_dimension() == \
        st.get_embedding_dimension() == 32
    assert ours.similarity_fn_name == st.similarity_fn_name == "cosine"
    assert ours.max_seq_length == st.max_seq_length == ours.config.max_seq_length
    assert ours.default_prompt_name == st.default_prompt_name
    assert {name: prefix for name, prefix in st.prompts.items() if prefix} == \
        {name: prefix for name, prefix in ours.prompts.items() if prefix}
    ours.max_seq_length = 64
    assert ours.config.max_seq_length == 64
    with pytest.raises(ValueError, match="max_seq_length=4096 exceeds the backbone's max_position_embeddings"):
        ours.max_seq_length = 4096
    ours.similarity_fn_name = "cosine"
    with pytest.raises(ValueError, match="similarity_fn_name='dot' is not supported"):
        ours.similarity_fn_name = "dot"
    with pytest.raises(ValueError, match="embeddings1 has 3 rows and embeddings2 2"):
        ours.similarity_pairwise(ours.encode(TEXTS), ours.encode(TEXTS[:2]))
    with pytest.raises(ValueError, match="32 and 8 dimensions"):
        ours.similarity(ours.encode(TEXTS), np.ones((2, 8), dtype=np.float32))


def test_sentence_transformers_arguments_for_tokenization_are_refused_there_too(both):
    """``st.encode(processing_kwargs=...)`` reached the module's preprocess and was dropped: the texts were
    embedded untruncated (before)."""
    _, st, _ = both
    with pytest.raises(ValueError, match=r"processing_kwargs=.* is not supported for this llm_embed model: "
                                         "tokenization follows the model's config"):
        st.encode(TEXTS, processing_kwargs={"text": {"max_length": 4, "truncation": True}})


def test_single_text_is_bit_identical(both):
    """One text is one batch either way: the two loaders run the same ids through the same weights."""
    ours, st, _ = both
    for text in TEXTS:
        assert np.array_equal(ours.encode_query(text), st.encode_query(text))


def test_overloads_type_the_returns():
    returns = [overload.__annotations__["return"] for overload in typing.get_overloads(LLMEmbeddingModel.encode)]
    assert returns == ["np.ndarray", "torch.Tensor", "torch.Tensor", "list[torch.Tensor]", "EncodeOutput"]
    for method in (LLMEmbeddingModel.encode_query, LLMEmbeddingModel.encode_document):
        assert len(typing.get_overloads(method)) == 5


@pytest.fixture()
def model(tokenizer):
    model = tiny_model("llama", "bidirectional", "mean")
    model.tokenizer = tokenizer
    return model


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(normalize=False, normalize_embeddings=True), ValueError, "normalize=False asks for raw vectors"),
        (dict(normalize_embeddings="yes"), TypeError, "normalize_embeddings must be True, False or None"),
        (dict(truncate_dim=8), ValueError, r"truncate_dim=8\) is not supported: .*slice embeddings"),
        (dict(pool={}), ValueError, "multi-process encoding is not supported"),
        (dict(task="query"), ValueError, "encode_query"),
        (dict(precision="int8"), ValueError, "quantize_embeddings"),
        (dict(output_value="token_embeddings"), ValueError, "sentence embeddings only"),
        (dict(output_value=None), ValueError, "sentence embeddings only"),
        (dict(device=["cpu", "cpu"]), ValueError, "multi-process encoding over several devices"),
        (dict(normalise=True), TypeError, "unexpected keyword argument 'normalise'"),
    ],
)
def test_unsupported_arguments_are_refused(model, kwargs, error, message):
    with pytest.raises(error, match=message):
        model.encode("a", **kwargs)


def test_compatible_argument_forms(model):
    reference = model.encode(TEXTS)
    # sentence-transformers' defaults, spelled out, request nothing
    same = model.encode(TEXTS, truncate_dim=None, pool=None, chunk_size=None, task=None, device=torch.device("cpu"))
    np.testing.assert_array_equal(same, reference)
    np.testing.assert_array_equal(model.encode(TEXTS, normalize=True, normalize_embeddings=False), reference)
    raw = model.encode(TEXTS, normalize=False)
    assert not unit_rows(raw)
    np.testing.assert_allclose(model.encode(TEXTS, normalize=False, normalize_embeddings=False), raw, atol=0)
    with pytest.raises(TypeError, match="positional"):
        model.encode(TEXTS, None, None, 32, True)  # keyword-only past batch_size: no silent misbinding


def test_inputs_and_sentences_and_numpy_forms(model):
    """``inputs`` (sentence-transformers >= 6.2) and ``sentences`` (its older name) name the same
    argument; numpy arrays of texts and numpy integers for batch_size work as there."""
    reference = model.encode(TEXTS)
    for method in (model.encode, model.encode_query, model.encode_document):
        expected = method(TEXTS)
        np.testing.assert_array_equal(method(inputs=TEXTS), expected)
        np.testing.assert_array_equal(method(sentences=TEXTS), expected)
        with pytest.raises(TypeError, match="both inputs and sentences"):
            method(TEXTS, sentences=TEXTS)
        with pytest.raises(TypeError, match="missing the texts"):
            method()
    np.testing.assert_array_equal(model.encode(np.array(TEXTS)), reference)
    np.testing.assert_array_equal(model.encode(np.array(TEXTS, dtype=object)), reference)
    with pytest.raises(TypeError, match=r"1-D numpy array of strings, got one of shape \(2, 3\)"):
        model.encode(np.array([TEXTS, TEXTS]))
    with pytest.raises(TypeError, match="1-D numpy array of strings"):
        model.encode(np.arange(3))
    np.testing.assert_allclose(model.encode(TEXTS, batch_size=np.int64(2)), model.encode(TEXTS, batch_size=2),
                               atol=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0$"):
        model.encode(TEXTS, batch_size=np.int64(0))
    for bad in (2.5, True, "2"):
        with pytest.raises(TypeError, match="batch_size must be an integer"):
            model.encode(TEXTS, batch_size=bad)


class FakeTokenizer:
    """Enough of a tokenizer for the pad-id and EOS helpers: no backend (not a fast tokenizer)."""

    def __init__(self, pad=None, eos=None):
        self.pad_token_id, self.eos_token_id = pad, eos
        self.pad_token = None if pad is None else "<pad>"
        self.eos_token = None if eos is None else "</s>"
        self.init_kwargs = {}

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [1, 7] if add_special_tokens else [7]}

    def convert_ids_to_tokens(self, ids):
        return [str(i) for i in ids]


def test_pad_id_fallback():
    assert resolve_pad_id(FakeTokenizer(pad=3, eos=2)) == 3
    assert resolve_pad_id(FakeTokenizer(eos=2)) == 2
    with pytest.raises(ValueError, match="neither a pad_token nor an eos_token.*tokenizer.pad_token"):
        resolve_pad_id(FakeTokenizer())


def test_configure_eos_error_says_what_happens():
    message = r"cannot use FakeTokenizer with append_eos=True.*fast tokenizer.*append_eos=False"
    with pytest.raises(ValueError, match=message):
        configure_eos(FakeTokenizer(pad=0, eos=2))
    model = tiny_model("llama", "bidirectional", "mean")
    with pytest.raises(ValueError, match=message):  # the model refuses the tokenizer: nothing appends EOS "anyway"
        model.tokenizer = FakeTokenizer(pad=0, eos=2)
    model = tiny_model("llama", "bidirectional", "mean", append_eos=False)
    model.tokenizer = FakeTokenizer(pad=0, eos=2)  # the way out the message names


def test_packing_does_not_import_encoding():
    """encoding imports packing; packing must not import encoding back (no cycle, not even lazily)."""
    tree = ast.parse((Path(__file__).resolve().parents[1] / "llm_embed" / "packing.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "encoding" not in imported and not any(name and name.endswith(".encoding") for name in imported)


def test_mteb_prompts_follow_encode_query(tokenizer):
    pytest.importorskip("mteb")
    from types import SimpleNamespace

    from llm_embed.mteb_encoder import MTEBEncoder

    model = tiny_model("llama", "bidirectional", "mean", prompts={"query": "q: "}, default_prompt_name="query")
    model.tokenizer = tokenizer
    encoder = MTEBEncoder(model)
    task = SimpleNamespace(name="SomeTask", type="Retrieval")
    assert encoder.prompt_for(task, "query") == "q: "
    assert encoder.prompt_for(task, "document") == ""  # as encode_document: no prompt, not the default one
    assert encoder.prompt_for(task, None) == "q: "  # symmetric: the default prompt, as encode
    encoder.symmetric_prompt_name = "missing"
    with pytest.raises(ValueError, match="unknown prompt_name 'missing'"):
        encoder.prompt_for(task, None)
    # given to the constructor, it is checked there, before any task runs (before: at the first STS task)
    with pytest.raises(ValueError, match=r"symmetric_prompt_name='qeury'\): not a prompt of the model, whose "
                                         r"prompts are \['query'\]"):
        MTEBEncoder(model, symmetric_prompt_name="qeury")
    assert MTEBEncoder(model, symmetric_prompt_name="document").prompt_for(task, None) == ""
