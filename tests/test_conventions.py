"""transformers conventions (``base_model``, ``return_dict``, ``resize_token_embeddings``) and a saved
folder that describes only the model: no machine-specific tokenizer keys, no custom-code question or
model-type warning when it is loaded without llm_embed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from .conftest import tiny_model


def test_base_model_is_the_backbone():
    model = tiny_model("llama", "bidirectional", "mean")
    assert model.base_model is model.backbone


def test_return_dict_follows_the_argument_then_the_config():
    model = tiny_model("llama", "bidirectional", "mean")
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert model(input_ids=ids).embeddings.shape == (1, 32)
        (embeddings,) = model(input_ids=ids, return_dict=False)
        assert embeddings.shape == (1, 32)
        model.config.return_dict = False
        assert isinstance(model(input_ids=ids), tuple)
        assert model(input_ids=ids, return_dict=True).embeddings.shape == (1, 32)


def test_resize_token_embeddings_keeps_both_backbone_configs_in_sync(tmp_path):
    from transformers import AutoModel

    model = tiny_model("llama", "bidirectional", "mean")
    model.resize_token_embeddings(49160, mean_resizing=False)
    assert model.config.backbone_config.vocab_size == model.backbone.config.vocab_size == 49160
    model.save_pretrained(tmp_path / "m")
    assert AutoModel.from_pretrained(tmp_path / "m").backbone.config.vocab_size == 49160


def test_saved_tokenizer_config_describes_only_the_tokenizer(tmp_path, tokenizer):
    from transformers import AutoModel

    model = tiny_model("llama", "bidirectional", "mean")
    model.tokenizer = tokenizer
    model.save_pretrained(tmp_path / "a")
    AutoModel.from_pretrained(tmp_path / "a", local_files_only=True).save_pretrained(tmp_path / "b")
    for folder in ("a", "b"):
        saved = json.loads((tmp_path / folder / "tokenizer_config.json").read_text())
        assert not {"is_local", "local_files_only", "cache_dir", "token", "_commit_hash"} & set(saved), saved.keys()


def test_loading_without_llm_embed_asks_nothing_and_warns_nothing(tmp_path, tokenizer, no_llm_embed_env):
    model = tiny_model("llama", "bidirectional", "multi_layer")
    model.tokenizer = tokenizer
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    expected = model.encode(["a text"]).tolist()
    script = f"""
import json
from transformers import AutoModel, AutoTokenizer
model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained({str(folder)!r}, trust_remote_code=True)
assert tokenizer("a")["input_ids"] == model.tokenizer("a")["input_ids"]
print("RESULT", json.dumps(model.encode(["a text"]).tolist()))
"""
    guard = ("try:\n    import llm_embed\n    raise SystemExit('llm_embed must not be importable here')\n"
             "except ImportError:\n    pass\n")
    result = subprocess.run([sys.executable, "-P", "-c", guard + script], env=dict(no_llm_embed_env, TQDM_DISABLE="1"),
                            cwd=tmp_path, capture_output=True, stdin=subprocess.DEVNULL, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.split("RESULT ", 1)[1]) == expected
    for unwanted in ("custom code", "[y/N]", "You are using a model of type"):
        assert unwanted not in result.stderr + result.stdout, result.stderr[-2000:]
    assert os.listdir(folder)  # the folder was not changed by loading


def test_saved_files_hold_no_local_paths(tmp_path, tiny_backbone_dir):
    """Neither config.json nor the model card names the folders the backbone or the model came from
    (a Hub id would be kept: it names the base model)."""
    from llm_embed import LLMEmbeddingModel

    model = LLMEmbeddingModel.from_backbone(tiny_backbone_dir, pooling="mean")
    model.save_pretrained(tmp_path / "a")
    from transformers import AutoModel

    AutoModel.from_pretrained(tmp_path / "a").save_pretrained(tmp_path / "b")
    for folder in ("a", "b"):
        for name in ("config.json", "README.md"):
            text = (tmp_path / folder / name).read_text()
            assert str(tiny_backbone_dir) not in text and str(tmp_path) not in text, (folder, name)
    assert f"llama ({tiny_backbone_dir.name})" in (tmp_path / "a" / "README.md").read_text()
