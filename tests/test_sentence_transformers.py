"""A saved model loads as SentenceTransformer (prompts, cosine similarity) with the same embeddings,
and SentenceTransformerTrainer with MultipleNegativesRankingLoss fine-tunes it."""

import json

import numpy as np
import pytest
from transformers import AutoModel

from llm_embed.model_card import MARKER

from .conftest import run_without_llm_embed, tiny_model, triplet_rows

sentence_transformers = pytest.importorskip("sentence_transformers")

TEXTS = ["how do I reset my card?", "x", "a much longer text about many different things and then some more"]


@pytest.fixture()
def saved(tokenizer, tmp_path):
    model = tiny_model("llama", "bidirectional", "multi_layer", default_prompt_name=None)
    model.tokenizer = tokenizer
    model.save_pretrained(tmp_path / "model")
    return model, tmp_path / "model"


def test_files_and_declared_settings(saved):
    model, folder = saved
    modules = json.loads((folder / "modules.json").read_text())
    assert modules == [{"idx": 0, "name": "0", "path": "",
                        "type": "sentence_transformers_llm_embed.LLMEmbeddingSTModule"}]
    settings = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert settings["similarity_fn_name"] == "cosine" and settings["prompts"] == model.config.prompts


def test_sentence_transformer_gives_the_same_embeddings(saved):
    from sentence_transformers import SentenceTransformer

    model, folder = saved
    st = SentenceTransformer(str(folder), trust_remote_code=True)
    assert st.similarity_fn_name == "cosine"
    # sentence-transformers batches by character length, encode by token length: other batches, so
    # equal up to batch invariance (1e-6 here), not bit for bit
    for prompt_name in ("query", "document"):
        np.testing.assert_allclose(st.encode(TEXTS, prompt_name=prompt_name),
                                   model.encode(TEXTS, prompt_name=prompt_name), atol=1e-6)
    np.testing.assert_allclose(st.encode(TEXTS, batch_size=2), model.encode(TEXTS), atol=1e-6)
    assert not np.allclose(st.encode(TEXTS, prompt_name="query"), st.encode(TEXTS), atol=1e-4)


def test_sentence_transformer_without_llm_embed(saved, no_llm_embed_env, tmp_path):
    model, folder = saved
    script = f"""
import json
from sentence_transformers import SentenceTransformer
st = SentenceTransformer({str(folder)!r}, trust_remote_code=True)
print("RESULT", json.dumps(st.encode({TEXTS!r}, prompt_name="query").tolist()))
"""
    remote = json.loads(run_without_llm_embed(script, no_llm_embed_env, cwd=tmp_path).split("RESULT ", 1)[1])
    np.testing.assert_allclose(np.asarray(remote, dtype=np.float32), model.encode(TEXTS, prompt_name="query"),
                               atol=1e-6)


def test_sentence_transformers_trainer_with_mnrl(saved, tmp_path):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    model, folder = saved
    st = SentenceTransformer(str(folder), trust_remote_code=True)
    rows = triplet_rows(16)
    data = Dataset.from_dict({"anchor": [r["query"] for r in rows], "positive": [r["positive"] for r in rows],
                              "negative": [r["negative"] for r in rows]})
    loss = MultipleNegativesRankingLoss(st)
    before = float(loss(*_features(st, rows[:8]), labels=None))
    args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "st-out"), max_steps=10,
                                                per_device_train_batch_size=8, learning_rate=1e-3,
                                                report_to="none", use_cpu=True, save_strategy="no", seed=0,
                                                logging_steps=1, disable_tqdm=True)
    SentenceTransformerTrainer(model=st, args=args, train_dataset=data, loss=loss).train()
    after = float(loss(*_features(st, rows[:8]), labels=None))
    assert after < before, (before, after)
    st.save(str(tmp_path / "trained"))
    reloaded = AutoModel.from_pretrained(tmp_path / "trained")
    np.testing.assert_allclose(reloaded.encode(TEXTS), st.encode(TEXTS), atol=1e-6)
    # after training, st.save writes sentence-transformers' own card, without llm_embed's marker: a save
    # into the same folder keeps it as the user's; a new folder gets llm_embed's (docs/sharing.md)
    assert MARKER not in (tmp_path / "trained" / "README.md").read_text()
    reloaded.save_pretrained(tmp_path / "trained")
    assert MARKER not in (tmp_path / "trained" / "README.md").read_text()
    reloaded.save_pretrained(tmp_path / "card")
    assert MARKER in (tmp_path / "card" / "README.md").read_text()


def _features(st, rows):
    import torch

    st.eval()
    with torch.no_grad():
        return [[st.preprocess([r[key] for r in rows]) for key in ("query", "positive", "negative")]]


def test_st_save_keeps_sentence_transformers_settings(saved, tmp_path, caplog):
    """SentenceTransformer.save writes its settings, then the module's save (save_pretrained) runs:
    the settings must survive it, and the tokenizer saved must follow st.max_seq_length."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    _, folder = saved
    st = SentenceTransformer(str(folder), trust_remote_code=True, truncate_dim=8)
    st.prompts = {"query": "search_query: ", "document": "search_document: ", "clustering": "cluster: "}
    st.default_prompt_name = "clustering"
    st.similarity_fn_name = "dot"
    st.max_seq_length = 8
    st.save(str(tmp_path / "st"))
    # untrained, sentence-transformers writes back the card it loaded: llm_embed's (docs/sharing.md)
    assert (tmp_path / "st" / "README.md").read_text() == (folder / "README.md").read_text()
    again = SentenceTransformer(str(tmp_path / "st"), trust_remote_code=True)
    assert again.prompts == st.prompts and again.default_prompt_name == "clustering"
    assert (again.similarity_fn_name, again.truncate_dim, again.max_seq_length) == ("dot", 8, 8)
    assert AutoTokenizer.from_pretrained(tmp_path / "st").model_max_length == 8
    for method in ("encode", "encode_query", "encode_document"):
        np.testing.assert_allclose(getattr(again, method)(TEXTS), getattr(st, method)(TEXTS), atol=1e-6)
    # the folder gives 8 dimensions through sentence-transformers, 32 through encode: loading says so
    with caplog.at_level("WARNING"):
        model = AutoModel.from_pretrained(tmp_path / "st")
    assert "sets truncate_dim=8 (a SentenceTransformer saved with it): sentence-transformers returns 8-dimensional " \
           "vectors from this folder, encode returns 32" in caplog.text
    np.testing.assert_allclose(again.encode(TEXTS), model.encode(TEXTS)[:, :8], atol=1e-6)


def test_st_save_writes_the_prompts_into_the_model_config(saved, tmp_path):
    """Prompts edited on the SentenceTransformer reach config.json, so the saved folder embeds the same
    through AutoModel as through SentenceTransformer (config.json used to keep the old prompts)."""
    from sentence_transformers import SentenceTransformer

    _, folder = saved
    st = SentenceTransformer(str(folder), trust_remote_code=True)
    st.prompts = {"query": "search_query: ", "document": "", "clustering": "cluster: "}
    st.default_prompt_name = "clustering"
    st.save(str(tmp_path / "st"))
    assert st[0].model.config.prompts == st.prompts  # the live model agrees too
    model = AutoModel.from_pretrained(tmp_path / "st")
    assert model.config.prompts == st.prompts and model.config.default_prompt_name == "clustering"
    for prompt_name in ("query", "clustering"):
        np.testing.assert_allclose(model.encode(TEXTS, prompt_name=prompt_name),
                                   st.encode(TEXTS, prompt_name=prompt_name), atol=1e-6)
    np.testing.assert_allclose(model.encode(TEXTS), st.encode(TEXTS), atol=1e-6)  # the default prompt


def test_st_save_refuses_prompts_the_config_refuses(saved, tmp_path):
    from sentence_transformers import SentenceTransformer

    _, folder = saved
    st = SentenceTransformer(str(folder), trust_remote_code=True)
    before = dict(st[0].model.config.prompts)
    st.prompts = {"query": 3}
    with pytest.raises((TypeError, ValueError), match="prompts"):
        st.save(str(tmp_path / "st"))
    assert st[0].model.config.prompts == before
    assert not (tmp_path / "st" / "config.json").exists()
    assert not (tmp_path / "st" / "config_sentence_transformers.json").exists()


def test_a_failed_st_save_over_a_checkpoint_leaves_it_loadable(saved):
    """sentence-transformers writes its settings file before the model's save runs: a save refused
    after that left the old checkpoint with {"query": 42} there, which no longer loaded."""
    from sentence_transformers import SentenceTransformer

    model, folder = saved
    model.config.prompts = {"query": "Q: ", "document": ""}
    model.save_pretrained(folder)
    st = SentenceTransformer(str(folder), trust_remote_code=True)
    reference = st.encode_query(["where is the cat"])
    st.prompts["query"] = 42
    st.truncate_dim = 8
    with pytest.raises((TypeError, ValueError), match="prompts"):
        st.save(str(folder))
    settings = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert settings["prompts"] == {"query": "Q: ", "document": ""}
    again = SentenceTransformer(str(folder), trust_remote_code=True)
    np.testing.assert_allclose(again.encode_query(["where is the cat"]), reference, atol=1e-6)


def test_st_refuses_a_prompt_that_fills_max_seq_length(saved):
    """``model.encode_query`` refused it; through sentence-transformers every query got one vector."""
    from sentence_transformers import SentenceTransformer

    _, folder = saved
    st = SentenceTransformer(str(folder), trust_remote_code=True)
    st.max_seq_length = 12  # the default query instruction alone is 20 tokens
    with pytest.raises(ValueError, match="no token of any text would remain"):
        st.encode_query(["where is the cat", "stock prices today"])
    with pytest.raises(ValueError, match="max_seq_length=4096 exceeds the backbone's max_position_embeddings"):
        st.max_seq_length = 4096


def test_module_source_is_the_module_file():
    """Saves write the module from MODULE_SOURCE (a remote-code model has no other copy of it)."""
    from pathlib import Path

    from llm_embed.sentence_transformers_files import MODULE_SOURCE

    module = Path(__file__).resolve().parents[1] / "llm_embed" / "sentence_transformers_llm_embed.py"
    assert MODULE_SOURCE == module.read_text(encoding="utf-8"), (
        "sentence_transformers_files.MODULE_SOURCE differs from sentence_transformers_llm_embed.py: copy the file's "
        "text into it"
    )


def test_remote_code_model_saves_the_sentence_transformers_files(saved, no_llm_embed_env, tmp_path):
    """Loaded with trust_remote_code (llm_embed not installed) and saved again, the folder still loads
    as a SentenceTransformer running this module, with the same embeddings."""
    from llm_embed.sentence_transformers_files import MODULE_SOURCE

    model, folder = saved
    resaved = tmp_path / "resaved"
    script = f"""
import json
from transformers import AutoModel
from sentence_transformers import SentenceTransformer
AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).save_pretrained({str(resaved)!r})
st = SentenceTransformer({str(resaved)!r}, trust_remote_code=True)
print("MODULES", json.dumps([type(module).__name__ for module in st]))
print("RESULT", json.dumps(st.encode({TEXTS!r}, prompt_name="query").tolist()))
"""
    out = run_without_llm_embed(script, no_llm_embed_env, cwd=tmp_path)
    assert json.loads(out.split("MODULES ", 1)[1].splitlines()[0]) == ["LLMEmbeddingSTModule"]
    assert (resaved / "sentence_transformers_llm_embed.py").read_text(encoding="utf-8") == MODULE_SOURCE
    for name in ("modules.json", "config_sentence_transformers.json"):
        assert json.loads((resaved / name).read_text()) == json.loads((folder / name).read_text())
    remote = json.loads(out.split("RESULT ", 1)[1])
    np.testing.assert_allclose(np.asarray(remote, dtype=np.float32), model.encode(TEXTS, prompt_name="query"),
                               atol=1e-6)


def test_load_arguments_are_applied_or_refused(saved):
    from sentence_transformers import SentenceTransformer

    _, folder = saved
    st = SentenceTransformer(str(folder), trust_remote_code=True,
                             config_kwargs={"max_seq_length": 8, "normalize": False})
    config = st[0].model.config
    assert (config.max_seq_length, config.normalize, st.max_seq_length) == (8, False, 8)
    assert not np.allclose(np.linalg.norm(st.encode(TEXTS[:1]), axis=-1), 1, atol=1e-3)
    with pytest.raises(ValueError, match="backend='onnx'.* not supported .*backend='torch'"):
        SentenceTransformer(str(folder), trust_remote_code=True, backend="onnx")
    with pytest.raises(ValueError, match=r"processor_kwargs=.* not supported.*config_kwargs=\{'max_seq_length'"):
        SentenceTransformer(str(folder), trust_remote_code=True, processor_kwargs={"model_max_length": 8})
    with pytest.raises(ValueError, match="'max_seq_length' is 16 in model_kwargs and 8 in config_kwargs"):
        SentenceTransformer(str(folder), trust_remote_code=True, model_kwargs={"max_seq_length": 16},
                            config_kwargs={"max_seq_length": 8})


def test_prompts_in_load_arguments_are_refused(saved):
    """sentence-transformers prompts from config_sentence_transformers.json: prompts given as config
    overrides changed the model's config and nothing st.encode did (and st.save wrote the others back)."""
    from sentence_transformers import SentenceTransformer

    model, folder = saved
    prompts = {"query": "Completely different: ", "document": ""}
    for where in ("config_kwargs", "model_kwargs"):
        with pytest.raises(ValueError, match=r"got prompts, default_prompt_name in config_kwargs / model_kwargs: .* "
                                             r"pass them as SentenceTransformer\(\.\.\., prompts=\{'query': "
                                             r"'Completely different: ', 'document': ''\}, default_prompt_name="
                                             r"'query'\)"):
            SentenceTransformer(str(folder), trust_remote_code=True,
                                **{where: {"prompts": prompts, "default_prompt_name": "query"}})
        with pytest.raises(ValueError, match="got default_prompt_name in"):
            SentenceTransformer(str(folder), trust_remote_code=True, **{where: {"default_prompt_name": None}})
    st = SentenceTransformer(str(folder), trust_remote_code=True, prompts=prompts, default_prompt_name="query")
    np.testing.assert_allclose(st.encode_query(TEXTS), model.encode(TEXTS, prompt=prompts["query"]), atol=1e-6)
    np.testing.assert_allclose(st.encode(TEXTS), st.encode_query(TEXTS), atol=1e-6)


def test_a_resave_keeps_the_sentence_transformers_settings(saved, tiny_backbone_dir, tmp_path):
    """AutoModel.from_pretrained(p).save_pretrained(q) of a folder st.save wrote with truncate_dim and
    similarity_fn_name dropped both from q (sentence-transformers then returned 32-dimensional vectors
    compared by cosine). They are kept as the model was loaded with them; the model's own prompts are the
    config's, and a backbone folder's sentence-transformers settings are not taken."""
    import shutil

    from sentence_transformers import SentenceTransformer

    from llm_embed import LLMEmbeddingModel

    _, folder = saved
    st = SentenceTransformer(str(folder), trust_remote_code=True, truncate_dim=8)
    st.similarity_fn_name = "dot"
    st.save(str(tmp_path / "p"))
    model = AutoModel.from_pretrained(tmp_path / "p")
    model.save_pretrained(tmp_path / "q")
    settings = json.loads((tmp_path / "q" / "config_sentence_transformers.json").read_text())
    assert (settings["truncate_dim"], settings["similarity_fn_name"]) == (8, "dot")
    again = SentenceTransformer(str(tmp_path / "q"), trust_remote_code=True)
    assert (again.truncate_dim, again.similarity_fn_name) == (8, "dot")
    np.testing.assert_allclose(again.encode(TEXTS), st.encode(TEXTS), atol=1e-6)
    model.save_pretrained(tmp_path / "p")  # into the folder it was loaded from
    assert json.loads((tmp_path / "p" / "config_sentence_transformers.json").read_text()) == settings
    # st.save of a SentenceTransformer loaded from p with other settings: its own settings, not the model's
    st = SentenceTransformer(str(tmp_path / "p"), trust_remote_code=True)
    st.truncate_dim, st.similarity_fn_name = None, "euclidean"
    st.save(str(tmp_path / "s"))
    settings = json.loads((tmp_path / "s" / "config_sentence_transformers.json").read_text())
    assert settings.get("truncate_dim") is None and settings["similarity_fn_name"] == "euclidean"
    model.config.prompts = {"query": "Q: ", "document": ""}  # changed on the model: the config's prompts
    model.save_pretrained(tmp_path / "r")
    settings = json.loads((tmp_path / "r" / "config_sentence_transformers.json").read_text())
    assert settings["prompts"] == {"query": "Q: ", "document": ""}
    assert (settings["truncate_dim"], settings["similarity_fn_name"]) == (8, "dot")  # as loaded
    # a backbone that is a sentence-transformers model of its own: its settings are not the built model's
    backbone = tmp_path / "backbone"
    shutil.copytree(tiny_backbone_dir, backbone)
    (backbone / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "",
                                                        "type": "sentence_transformers.models.Transformer"}]))
    (backbone / "config_sentence_transformers.json").write_text(json.dumps({"truncate_dim": 4,
                                                                            "similarity_fn_name": "dot"}))
    built = LLMEmbeddingModel.from_backbone(str(backbone), pooling="mean")
    assert built.config.name_or_path == str(backbone)
    built.save_pretrained(tmp_path / "built")
    settings = json.loads((tmp_path / "built" / "config_sentence_transformers.json").read_text())
    assert "truncate_dim" not in settings and settings["similarity_fn_name"] == "cosine"


def test_token_embeddings_are_refused_clearly(saved):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(saved[1]), trust_remote_code=True)
    with pytest.raises(ValueError, match="output_value='token_embeddings' is not supported.*sentence embeddings"):
        st.encode(TEXTS, output_value="token_embeddings")
    rows = st.encode(TEXTS, output_value=None)  # every output, as dicts: what the module gives
    assert len(rows) == 3 and rows[0]["sentence_embedding"].shape == (32,)


def test_truncation_warning_through_sentence_transformers_points_at_the_callers_line(saved):
    """It named a line inside sentence-transformers, where Python's once-per-location filter hid the
    warnings of every other call site (before)."""
    import warnings
    from pathlib import Path

    from sentence_transformers import SentenceTransformer

    _, folder = saved
    st = SentenceTransformer(str(folder), trust_remote_code=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        st.encode(["word " * 600, "short"])
    truncation = [w for w in caught if "were truncated" in str(w.message)]
    assert [(Path(w.filename).name, str(w.message)[:8]) for w in truncation] == [(Path(__file__).name, "1 of 2 t")]


def test_the_module_refuses_what_encode_refuses_and_takes_a_tokenizer(saved, tokenizer, tmp_path, caplog):
    """``st.encode([("a", "b")])`` embedded the pair joined with EOS (``encode`` refuses it), a dict failed
    with an AttributeError inside tokenization, ``st.tokenizer = ...`` said the module had no tokenizer,
    ``st.save(safe_serialization=False)`` wrote safetensors without a word, and the documented remote-code
    load warned that trust_remote_code "has no effect"."""
    from sentence_transformers import SentenceTransformer

    model, folder = saved
    with caplog.at_level("WARNING"):
        AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert "trust_remote_code" not in caplog.text
    st = SentenceTransformer(str(folder), trust_remote_code=True)
    with pytest.raises(TypeError, match="item 0 is tuple, not str"):
        st.encode([("how are you", "fine thanks")])
    with pytest.raises(TypeError, match="item 1 is dict, not str"):
        st.encode(["fine", {"text": "hi"}])
    st.tokenizer = tokenizer
    assert st.tokenizer is st[0].model.tokenizer and st.tokenizer is not tokenizer  # the model's configured copy
    np.testing.assert_allclose(st.encode(TEXTS), model.encode(TEXTS), atol=1e-6)
    with pytest.raises(ValueError, match="safetensors only"):
        st.save(str(tmp_path / "bin"), safe_serialization=False)
