"""A saved model loads as SentenceTransformer (prompts, cosine similarity) with the same embeddings,
and SentenceTransformerTrainer with MultipleNegativesRankingLoss fine-tunes it."""

import json

import numpy as np
import pytest
from transformers import AutoModel

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


def _features(st, rows):
    import torch

    st.eval()
    with torch.no_grad():
        return [[st.preprocess([r[key] for r in rows]) for key in ("query", "positive", "negative")]]
