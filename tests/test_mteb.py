"""The mteb 2.x encoder protocol, called exactly as mteb calls it, and one of mteb's own evaluators
(AnySTSEvaluator) run on the local STS-B test set."""

import csv
import warnings

import numpy as np
import pytest

from .conftest import SHARED_DATA, tiny_model

mteb = pytest.importorskip("mteb")


def stsb_test(limit):
    path = SHARED_DATA / "stsb" / "sts-test.csv"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            rows.append((row[5], row[6], float(row[4])))
            if len(rows) == limit:
                break
    return rows


@pytest.fixture()
def encoder(tokenizer):
    from llm_embed.mteb_encoder import MTEBEncoder

    model = tiny_model("llama", "bidirectional", "latent_attention")
    model.tokenizer = tokenizer
    return MTEBEncoder(model, batch_size=8)


def test_protocol_and_prompts(encoder):
    from mteb._create_dataloaders import _create_dataloader_from_texts
    from mteb.models.models_protocols import EncoderProtocol
    from mteb.types import PromptType

    assert isinstance(encoder, EncoderProtocol)
    meta = encoder.mteb_model_meta
    assert meta.embed_dim == 32 and meta.similarity_fn_name.value == "cosine" and meta.max_tokens == 512
    task = mteb.get_task("SciFact").metadata
    texts = ["what is a cell?", "cells are the unit of life", "x"]
    loader = _create_dataloader_from_texts(texts, batch_size=2)
    model = encoder.model
    queries = encoder.encode(loader, task_metadata=task, hf_split="test", hf_subset="default",
                             prompt_type=PromptType.query)
    np.testing.assert_allclose(queries, model.encode(texts, prompt_name="query"), atol=1e-6)
    documents = encoder.encode(loader, task_metadata=task, hf_split="test", hf_subset="default",
                               prompt_type=PromptType.document)
    np.testing.assert_allclose(documents, model.encode(texts, prompt_name="document"), atol=1e-6)
    assert not np.allclose(queries, documents, atol=1e-4)  # the query instruction was applied
    symmetric = encoder.encode(loader, task_metadata=task, hf_split="test", hf_subset="default", prompt_type=None)
    np.testing.assert_allclose(symmetric, model.encode(texts), atol=1e-6)
    scores = encoder.similarity(queries, documents)
    assert scores.shape == (3, 3) and abs(float(scores[1, 1]) - float(queries[1] @ documents[1])) < 1e-5
    assert encoder.similarity_pairwise(queries, documents).shape == (3,)


def test_task_prompts_override(encoder):
    task = mteb.get_task("STSBenchmark").metadata
    encoder.task_prompts = {"STSBenchmark": "Retrieve semantically similar text: "}
    assert encoder.prompt_for(task, None) == "Retrieve semantically similar text: "
    encoder.task_prompts = {"STS": "sts: "}
    assert encoder.prompt_for(task, None) == "sts: "


def test_task_prompts_keyed_as_mteb_keys_them(encoder):
    """Every level of mteb's own ``model_prompts`` keys applies, the bare query / document one too, in
    mteb's order; a key mteb does not know is refused when the encoder is built."""
    from mteb.models.abs_encoder import get_prompt_name
    from mteb.types import PromptType

    from llm_embed.mteb_encoder import MTEBEncoder

    scifact, sts = mteb.get_task("SciFact").metadata, mteb.get_task("STSBenchmark").metadata
    prompts = {"query": "Q: ", "document": "D: "}
    built = MTEBEncoder(encoder.model, task_prompts=prompts)
    assert built.prompt_for(scifact, PromptType.query) == "Q: "
    assert built.prompt_for(scifact, PromptType.document) == "D: "
    assert built.prompt_for(sts, None) == ""  # a symmetric task is neither side
    levels = {"SciFact-query": "1", "SciFact": "2", "Retrieval-query": "3", "Retrieval": "4", "query": "5"}
    for dropped in [None, *levels]:
        kept = {key: value for key, value in levels.items() if key != dropped}
        built = MTEBEncoder(encoder.model, task_prompts=kept)
        assert built.prompt_for(scifact, PromptType.query) == kept[get_prompt_name(kept, scifact, PromptType.query)]
    with pytest.raises(ValueError, match=r"task_prompts keys \['SciFcat', 'qeury'\] are not known to mteb"):
        MTEBEncoder(encoder.model, task_prompts={"qeury": "Q: ", "SciFcat": "x", "STS": "s"})
    with pytest.raises(TypeError, match="task_prompts values must be strings"):
        MTEBEncoder(encoder.model, task_prompts={"query": None})


@pytest.mark.slow
def test_mteb_sts_evaluator_on_local_stsb(smollm2_path):
    """mteb's AnySTSEvaluator over 300 STS-B test pairs with SmolLM2 (causal, mean pooling, untrained):
    its cosine scores are ours, and the Spearman correlation is far above chance."""
    from datasets import Dataset
    from mteb._evaluators.any_sts_evaluator import AnySTSEvaluator
    from mteb.timing import TimingStack
    from scipy.stats import spearmanr

    from llm_embed import LLMEmbeddingModel
    from llm_embed.mteb_encoder import MTEBEncoder

    rows = stsb_test(300)
    model = LLMEmbeddingModel.from_backbone(smollm2_path, attention="causal", pooling="mean")
    encoder = MTEBEncoder(model, batch_size=32)
    dataset = Dataset.from_dict({"sentence1": [r[0] for r in rows], "sentence2": [r[1] for r in rows]})
    evaluator = AnySTSEvaluator(dataset, ("sentence1", "sentence2"),
                                task_metadata=mteb.get_task("STSBenchmark").metadata,
                                hf_split="test", hf_subset="default", input1_prompt_type=None,
                                input2_prompt_type=None, timer=TimingStack())
    scores = evaluator(encoder, encode_kwargs={"batch_size": 32})
    ours = np.sum(model.encode([r[0] for r in rows]) * model.encode([r[1] for r in rows]), axis=1)
    np.testing.assert_allclose(scores["cosine_scores"], ours, atol=1e-5)
    spearman = spearmanr(scores["cosine_scores"], [r[2] for r in rows]).statistic
    print(f"mteb AnySTSEvaluator, STS-B test[:300], SmolLM2 causal+mean untrained: Spearman {spearman:.4f}")
    assert spearman > 0.3, spearman


def test_mteb_evaluate_end_to_end_on_local_stsb(encoder):
    """mteb.evaluate itself, on its STSBenchmark task with the local STS-B test pairs put in place of
    the download: its cosine Spearman equals the one computed from model.encode."""
    import warnings

    from datasets import Dataset, DatasetDict
    from scipy.stats import spearmanr

    rows = stsb_test(60)
    task = mteb.get_task("STSBenchmark")
    task.dataset = DatasetDict({"test": Dataset.from_dict({
        "sentence1": [r[0] for r in rows], "sentence2": [r[1] for r in rows], "score": [r[2] for r in rows]})})
    task.data_loaded = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "superseded by STSBenchmark.v2"
        result = mteb.evaluate(encoder, [task], cache=None, show_progress_bar=False)
    scores = result.task_results[0].scores["test"][0]
    model = encoder.model
    cosine = np.sum(model.encode([r[0] for r in rows]) * model.encode([r[1] for r in rows]), axis=1)
    assert abs(scores["cosine_spearman"] - spearmanr(cosine, [r[2] for r in rows]).statistic) < 1e-6


def test_two_models_never_share_a_cached_result(tokenizer, tmp_path):
    """mteb caches results by model name and revision, and the name is the folder's last part: two
    models saved as runA/final and runB/final were both "llm_embed/final" with no revision, so
    mteb.evaluate handed model A's cached scores to model B. The default revision hashes the model."""
    from datasets import Dataset, DatasetDict
    from scipy.stats import spearmanr

    from llm_embed import LLMEmbeddingModel
    from llm_embed.mteb_encoder import MTEBEncoder

    rows = stsb_test(40)
    cache = mteb.ResultCache(cache_path=str(tmp_path / "cache"))
    for run, seed in (("runA", 0), ("runB", 1)):
        model = tiny_model("llama", "bidirectional", "mean", seed=seed)
        model.tokenizer = tokenizer
        model.save_pretrained(tmp_path / run / "final")
    revisions = set()
    for run in ("runA", "runB"):
        encoder = MTEBEncoder(str(tmp_path / run / "final"), batch_size=8)
        meta = encoder.mteb_model_meta
        assert meta.name == "llm_embed/final" and meta.revision == encoder.mteb_model_meta.revision
        revisions.add(meta.revision)
        task = mteb.get_task("STSBenchmark")
        task.dataset = DatasetDict({"test": Dataset.from_dict({
            "sentence1": [r[0] for r in rows], "sentence2": [r[1] for r in rows], "score": [r[2] for r in rows]})})
        task.data_loaded = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = mteb.evaluate(encoder, [task], cache=cache, show_progress_bar=False)
        model = encoder.model
        cosine = np.sum(model.encode([r[0] for r in rows]) * model.encode([r[1] for r in rows]), axis=1)
        expected = spearmanr(cosine, [r[2] for r in rows]).statistic
        assert abs(result.task_results[0].scores["test"][0]["cosine_spearman"] - expected) < 1e-6, run
    assert len(revisions) == 2
    assert MTEBEncoder(LLMEmbeddingModel.from_pretrained(tmp_path / "runA" / "final"),
                       revision="v1").mteb_model_meta.revision == "v1"


def test_a_plain_decoder_folder_is_refused_by_name(tiny_backbone_dir):
    from llm_embed.mteb_encoder import MTEBEncoder

    with pytest.raises(ValueError, match="holds a plain llama model"):
        MTEBEncoder(str(tiny_backbone_dir))


def test_encode_kwargs_precision_quantizes_and_unknown_keys_are_refused(encoder, monkeypatch):
    """mteb passes its encode_kwargs (batch_size, show_progress_bar, precision) to encode: precision
    quantizes as sentence-transformers' encode does (it used to be dropped, and mteb filed float32
    scores as binary ones); a key encode would not use is refused, not ignored."""
    import sys

    from mteb._create_dataloaders import _create_dataloader_from_texts
    from sentence_transformers import quantize_embeddings

    task = mteb.get_task("STSBenchmark").metadata
    texts = ["what is a cell?", "cells are the unit of life", "x"]
    model = encoder.model

    def encode(**kwargs):
        loader = _create_dataloader_from_texts(texts, batch_size=2)
        return encoder.encode(loader, task_metadata=task, hf_split="test", hf_subset="default", **kwargs)

    floats = model.encode(texts)
    for precision in ("binary", "ubinary", "int8", "uint8"):
        quantized = encode(batch_size=2, show_progress_bar=False, precision=precision)
        expected = quantize_embeddings(floats, precision=precision)
        assert quantized.dtype == expected.dtype and quantized.shape == expected.shape, precision
        np.testing.assert_array_equal(quantized, expected)
    for precision in ("float32", None):
        np.testing.assert_allclose(encode(precision=precision), floats, atol=1e-6)
    with pytest.raises(TypeError, match=r"encode_kwargs \['convert_to_tensor'\] it does not support: it takes "
                                        r"batch_size, show_progress_bar, precision"):
        encode(batch_size=2, convert_to_tensor=True)
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # not installed
    with pytest.raises(ImportError, match=r"precision='binary' quantizes with sentence-transformers: pip install "
                                          r"'llm-embed\[sentence-transformers\]'"):
        encode(precision="binary")
    np.testing.assert_allclose(encode(precision="float32"), floats, atol=1e-6)  # needs no sentence-transformers


def test_mteb_evaluate_honours_batch_size_and_precision(tokenizer):
    """Under mteb.evaluate, which always sets encode_kwargs["batch_size"] (32 when none is given),
    MTEBEncoder(batch_size=...) used to be ignored; now the constructor's value wins, else mteb's.
    A precision in encode_kwargs changes the scores mteb files."""
    from datasets import Dataset, DatasetDict

    from llm_embed.mteb_encoder import MTEBEncoder

    rows = stsb_test(20)
    model = tiny_model("llama", "bidirectional", "mean")
    model.tokenizer = tokenizer
    batch_sizes = []
    encode = model.encode

    def spy(*args, **kwargs):
        batch_sizes.append(kwargs["batch_size"])
        return encode(*args, **kwargs)

    model.encode = spy

    def evaluate(encoder, **kwargs):
        task = mteb.get_task("STSBenchmark")
        task.dataset = DatasetDict({"test": Dataset.from_dict({
            "sentence1": [r[0] for r in rows], "sentence2": [r[1] for r in rows], "score": [r[2] for r in rows]})})
        task.data_loaded = True
        batch_sizes.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = mteb.evaluate(encoder, [task], cache=None, show_progress_bar=False, **kwargs)
        return result.task_results[0].scores["test"][0]["cosine_spearman"], set(batch_sizes)

    floats, sizes = evaluate(MTEBEncoder(model, batch_size=4))
    assert sizes == {4}
    assert evaluate(MTEBEncoder(model, batch_size=4), encode_kwargs={"batch_size": 8}) == (floats, {4})
    assert evaluate(MTEBEncoder(model), encode_kwargs={"batch_size": 8}) == (floats, {8})
    assert evaluate(MTEBEncoder(model)) == (floats, {32})  # mteb's own default
    binary, sizes = evaluate(MTEBEncoder(model, batch_size=4), encode_kwargs={"precision": "binary"})
    assert sizes == {4} and binary != floats
