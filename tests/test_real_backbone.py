"""The real SmolLM2-135M backbone (bundled GGUF): build, encode, save, reload, identical embeddings."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModel

from llm_embed import LLMEmbeddingModel
from llm_embed.bundled import smollm2_gguf_file

from .conftest import SHARED_DATA, run_without_llm_embed

pytestmark = pytest.mark.slow

TEXTS = ["how do I reset my card?", "Branches open at 9am.", "Freeze a lost card in the app, then order a new one."]


@pytest.fixture(scope="module")
def smollm2_model(smollm2_path):
    torch.manual_seed(0)
    return LLMEmbeddingModel.from_backbone(smollm2_path, attention="bidirectional", pooling="multi_layer")


def test_backbone_weights_are_the_pretrained_ones(smollm2_path, smollm2_model):
    raw = AutoModel.from_pretrained(smollm2_path)
    for name, tensor in raw.state_dict().items():
        assert torch.equal(smollm2_model.backbone.state_dict()[name], tensor), name
    assert smollm2_model.config.backbone_config.num_hidden_layers == 30
    assert smollm2_model.config.backbone_hidden_size == 576
    head = sum(p.numel() for n, p in smollm2_model.named_parameters() if not n.startswith("backbone."))
    assert head < 0.03 * sum(p.numel() for p in smollm2_model.parameters())


def test_build_encode_save_reload_identical(smollm2_model, tmp_path, no_llm_embed_env):
    embeddings = smollm2_model.encode(TEXTS, prompt_name="document", batch_size=2)
    assert embeddings.shape == (3, 576) and np.isfinite(embeddings).all()
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
    smollm2_model.save_pretrained(tmp_path / "model")
    files = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "modeling_llm_embed.py"} <= files

    reloaded = AutoModel.from_pretrained(tmp_path / "model")
    assert np.array_equal(reloaded.encode(TEXTS, prompt_name="document", batch_size=2), embeddings)

    script = f"""
import json
from transformers import AutoModel
model = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
print("RESULT", json.dumps(model.encode({TEXTS!r}, prompt_name="document", batch_size=2).tolist()))
"""
    stdout = run_without_llm_embed(script, no_llm_embed_env, cwd=tmp_path)
    remote = json.loads(stdout.split("RESULT ", 1)[1])
    assert np.array_equal(np.asarray(remote, dtype=np.float32), embeddings)


def test_from_backbone_reads_the_gguf_file_directly(smollm2_path, tmp_path):
    gguf = smollm2_gguf_file()
    model = LLMEmbeddingModel.from_backbone(gguf.parent, gguf_file=gguf.name, attention="causal", pooling="last_token")
    reference = LLMEmbeddingModel.from_backbone(smollm2_path, attention="causal", pooling="last_token")
    a = model.encode(TEXTS)
    np.testing.assert_allclose(a, reference.encode(TEXTS), atol=1e-5)
    assert not model.backbone.is_quantized and not hasattr(model.backbone.config, "quantization_config")
    model.save_pretrained(tmp_path / "first")  # a GGUF-loaded backbone is dequantized: saving works
    reloaded = AutoModel.from_pretrained(tmp_path / "first")
    np.testing.assert_array_equal(reloaded.encode(TEXTS), a)
    reloaded.save_pretrained(tmp_path / "second")  # was "quantized with gguf and is not serializable"
    np.testing.assert_array_equal(AutoModel.from_pretrained(tmp_path / "second").encode(TEXTS), a)


def test_training_entry_point_on_snli_with_smollm2(tmp_path):
    """The defaults (bundled SmolLM2, bidirectional + multi_layer) on the shared SNLI triplets, a few
    CPU steps: the Trainer runs, the loss is finite, and the saved model loads and encodes."""
    data = SHARED_DATA / "nli_triplets" / "snli_dev_triplets.jsonl"
    if not data.is_file():
        pytest.skip(f"{data} is absent")
    from llm_embed.train import main

    out = main(["--train_file", str(data), "--output_dir", str(tmp_path / "out"), "--max_steps", "2",
                "--per_device_train_batch_size", "4", "--max_seq_length", "32", "--max_train_rows", "64",
                "--logging_steps", "1", "--report_to", "none", "--use_cpu"])
    model = AutoModel.from_pretrained(out)
    assert (model.config.attention, model.config.pooling) == ("bidirectional", "multi_layer")
    losses = [e["loss"] for e in json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
              if "loss" in e]
    assert len(losses) == 2 and all(np.isfinite(losses)) and all(loss > 0 for loss in losses)
    vectors = model.encode(["A man is playing a guitar .", "Someone plays music ."])
    assert vectors.shape == (2, 576) and np.isfinite(vectors).all()
