"""push_to_hub through the real huggingface_hub code path (only the HTTP-facing HfApi calls are
intercepted), laid out as the Hub cache would hold it, loaded by repo id offline in a fresh
process without llm_embed."""

import json

import numpy as np
import pytest
import torch
from huggingface_hub import CommitInfo, HfApi, RepoUrl

from .conftest import run_without_llm_embed, tiny_model

REPO = "acme/tiny-mlpool"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def fake_hub(monkeypatch, tmp_path):
    """Capture what would be uploaded; write it into an HF_HUB_CACHE layout."""
    cache = tmp_path / "hub"
    uploaded = {}

    def create_repo(self, repo_id, **kwargs):
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, commit_message=None, **kwargs):
        snapshot = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / COMMIT
        snapshot.mkdir(parents=True, exist_ok=True)
        for operation in operations:
            with open(operation.path_or_fileobj, "rb") as handle:
                data = handle.read()
            uploaded[operation.path_in_repo] = data
            (snapshot / operation.path_in_repo).write_bytes(data)
        refs = snapshot.parents[1] / "refs"
        refs.mkdir(exist_ok=True)
        (refs / "main").write_text(COMMIT)
        uploaded["_commit_message"] = commit_message
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{COMMIT}",
                          commit_message=commit_message, commit_description="", oid=COMMIT)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return cache, uploaded


def test_push_uploads_everything_and_loads_by_repo_id_without_llm_embed(fake_hub, tokenizer, tmp_path,
                                                                          no_llm_embed_env):
    cache, uploaded = fake_hub
    model = tiny_model("llama", "bidirectional", "multi_layer")
    model.tokenizer = tokenizer
    info = model.push_to_hub(REPO, license="apache-2.0", evaluation_results={"STS-B (Spearman x100)": 12.5})
    assert info.oid == COMMIT
    names = set(uploaded) - {"_commit_message"}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md",
            "configuration_llm_embed.py", "modeling_llm_embed.py", "pooling.py", "layer_states.py",
            "bidirectional.py", "encoding.py", "contrastive.py", "model_card.py"} <= names
    config = json.loads(uploaded["config.json"])
    assert config["auto_map"]["AutoModel"] == "modeling_llm_embed.LLMEmbeddingModel"
    card = uploaded["README.md"].decode()
    for expected in ("library_name: transformers", "pipeline_tag: feature-extraction", '- "llm_embed"',
                     'license: "apache-2.0"', "| attention | bidirectional |", "| pooling | multi_layer |",
                     f'AutoModel.from_pretrained("{REPO}", trust_remote_code=True)',
                     f'SentenceTransformer("{REPO}", trust_remote_code=True)', "| STS-B (Spearman x100) | 12.5 |"):
        assert expected in card, expected

    texts = ["how do I reset my card?", "Branches open at 9am."]
    expected = model.encode(texts, prompt_name="query")
    env = dict(no_llm_embed_env, HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf-home"))
    script = f"""
import json
from transformers import AutoModel
model = AutoModel.from_pretrained({REPO!r}, trust_remote_code=True)
print("RESULT", json.dumps(model.encode({texts!r}, prompt_name="query").tolist()))
"""
    remote = json.loads(run_without_llm_embed(script, env, cwd=tmp_path).split("RESULT ", 1)[1])
    np.testing.assert_array_equal(np.asarray(remote, dtype=np.float32), expected)


def test_push_then_load_by_repo_id_with_llm_embed(fake_hub, tokenizer, monkeypatch):
    cache, _ = fake_hub
    model = tiny_model("qwen2", "causal", "last_token")
    model.tokenizer = tokenizer
    model.push_to_hub(REPO)
    # HF_HUB_OFFLINE is read when huggingface_hub is imported: set the parsed constant for this process
    import huggingface_hub.constants
    from transformers import AutoModel

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    loaded = AutoModel.from_pretrained(REPO, cache_dir=str(cache))
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(loaded.encode(["abc"]), model.encode(["abc"]))


def test_save_pretrained_writes_a_card_but_never_overwrites_a_users(tmp_path):
    model = tiny_model("llama", "causal", "mean")
    model.save_pretrained(tmp_path / "a")
    assert "| pooling | mean |" in (tmp_path / "a" / "README.md").read_text()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "README.md").write_text("my own card\n")
    model.save_pretrained(tmp_path / "b")
    assert (tmp_path / "b" / "README.md").read_text() == "my own card\n"


def test_autotokenizer_from_a_saved_folder_has_the_models_settings(tokenizer, tmp_path):
    """Padding side, pad token, length and the appended EOS come back with AutoTokenizer, and
    the user's tokenizer object is left as it was."""
    from transformers import AutoTokenizer

    model = tiny_model("llama", "causal", "last_token", padding_side="left", max_seq_length=128)
    model.tokenizer = tokenizer
    model.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.padding_side == "left" and loaded.model_max_length == 128
    assert loaded.pad_token is not None
    ids = loaded("hello world")["input_ids"]
    assert ids[-1] == loaded.eos_token_id and ids[:-1] == tokenizer("hello world")["input_ids"]
    assert tokenizer("hello world")["input_ids"][-1] != tokenizer.eos_token_id  # caller's object untouched
    with torch.no_grad():  # the model gives the same embedding from these ids as from encode
        out = model(input_ids=torch.tensor([ids])).embeddings[0].numpy()
    np.testing.assert_allclose(out, model.encode("hello world"), atol=1e-6)


def test_lora_adapters_and_head_push_and_load_by_repo_id(fake_hub, tiny_backbone_dir, monkeypatch):
    pytest.importorskip("peft")
    import huggingface_hub.constants
    import torch

    from llm_embed import LLMEmbeddingModel
    from llm_embed.lora import apply_lora, load_lora

    cache, uploaded = fake_hub
    build = lambda: LLMEmbeddingModel.from_backbone(tiny_backbone_dir, attention="bidirectional",
                                                    pooling="latent_attention")
    torch.manual_seed(0)
    peft_model = apply_lora(build(), r=4, alpha=8, dropout=0.0)
    with torch.no_grad():  # stand-in for training: move adapters and head off their initial values
        for _name, param in peft_model.named_parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    peft_model.push_to_hub(REPO)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(uploaded)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    torch.manual_seed(1)
    reloaded = load_lora(build(), REPO, cache_dir=str(cache))
    texts = ["what about the cat?", "a text on the moon"]
    np.testing.assert_allclose(reloaded.encode(texts), peft_model.encode(texts), atol=1e-6)
