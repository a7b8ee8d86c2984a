"""push_to_hub through the real huggingface_hub code path (only the HTTP-facing HfApi calls are
intercepted), laid out as the Hub cache would hold it, loaded by repo id offline in a fresh
process without llm_embed."""

import json
import shutil

import numpy as np
import pytest
import torch
from huggingface_hub import CommitInfo, CommitOperationDelete, HfApi, RepoUrl

from llm_embed.model_card import render_model_card

from .conftest import run_without_llm_embed, tiny_model

REPO = "acme/tiny-mlpool"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def fake_hub(monkeypatch, tmp_path):
    """Capture what would be uploaded; keep the repo's files across commits as the Hub does (a commit
    adds and deletes files, the rest stays) and write them into an HF_HUB_CACHE layout. The repo's
    files (``repo_files``) can be set before a push, as if pushed by someone else."""
    cache = tmp_path / "hub"
    uploaded = {}
    repo_files = {".gitattributes": b"*.safetensors filter=lfs\n"}

    def create_repo(self, repo_id, **kwargs):
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def list_repo_files(self, repo_id, *, revision=None, **kwargs):
        return sorted(repo_files)

    def hf_hub_download(self, repo_id, filename, *, cache_dir=None, **kwargs):
        path = tmp_path / "downloads" / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(repo_files[filename])
        return str(path)

    def create_commit(self, repo_id, operations, commit_message=None, commit_description=None, **kwargs):
        snapshot = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / COMMIT
        uploaded.clear()
        for operation in operations:
            if isinstance(operation, CommitOperationDelete):
                del repo_files[operation.path_in_repo]
                uploaded.setdefault("_deleted", []).append(operation.path_in_repo)
                continue
            with open(operation.path_or_fileobj, "rb") as handle:
                data = handle.read()
            uploaded[operation.path_in_repo] = data
            repo_files[operation.path_in_repo] = data
        if snapshot.exists():
            shutil.rmtree(snapshot)
        snapshot.mkdir(parents=True)
        for name, data in repo_files.items():
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            (snapshot / name).write_bytes(data)
        refs = snapshot.parents[1] / "refs"
        refs.mkdir(exist_ok=True)
        (refs / "main").write_text(COMMIT)
        uploaded["_commit_message"] = commit_message
        uploaded["_commit_description"] = commit_description
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{COMMIT}",
                          commit_message=commit_message, commit_description=commit_description or "", oid=COMMIT)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "list_repo_files", list_repo_files)
    monkeypatch.setattr(HfApi, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return cache, uploaded, repo_files


def test_push_uploads_everything_and_loads_by_repo_id_without_llm_embed(fake_hub, tokenizer, tmp_path,
                                                                          no_llm_embed_env):
    cache, uploaded, _ = fake_hub
    model = tiny_model("llama", "bidirectional", "multi_layer")
    model.tokenizer = tokenizer
    info = model.push_to_hub(REPO, license="apache-2.0", evaluation_results={"STS-B (Spearman x100)": 12.5})
    assert info.oid == COMMIT
    names = {name for name in uploaded if not name.startswith("_")}
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
    cache, _, _ = fake_hub
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


def test_card_gives_the_output_projection_its_own_row(tmp_path):
    """With output_dim, the card's "pooling head ... N parameters" once counted the projection too,
    which had no row of its own: each now has its own row and count."""
    model = tiny_model("llama", "bidirectional", "multi_layer", output_dim=16, num_latents=4, pooling_heads=2,
                       pooling_head_dim=8)
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    head = sum(p.numel() for p in model.pooler.parameters())
    projection = sum(p.numel() for p in model.projection.parameters())
    assert projection == 32 * 16 + 16
    assert f"| output projection | linear 32 -> 16, {projection:,} parameters |" in card
    assert f", {head:,} parameters |" in card
    assert f"{head + projection:,} parameters" not in card
    assert "| output projection |" not in render_model_card(tiny_model("llama", "bidirectional", "multi_layer",
                                                                        num_latents=4))


def test_card_usage_names_the_models_own_prompts_and_its_default():
    """The snippet once called prompt_name="query" / "document" on any model: on one without those
    prompts that embeds with no prefix, not with the model's prompt; the default prompt was not named."""
    own = render_model_card(tiny_model("llama", "causal", "mean", prompts={"q": "Q: "}, default_prompt_name="q"))
    assert 'prompt_name="query"' not in own and 'prompt_name="document"' not in own
    assert own.count('model.encode(["how do I reset my card?"], prompt_name="q")') == 3
    assert 'documents = model.encode(["Open the app, choose Cards, then Change PIN."])  # the default prompt, "q"' \
        in own
    assert "| default prompt | `q` (used when encode() names no prompt) |" in own
    # without a default: the first prompt for queries, documents as they are
    plain = render_model_card(tiny_model("llama", "causal", "mean", prompts={"q": "Q: "}))
    assert 'queries = model.encode(["how do I reset my card?"], prompt_name="q")' in plain
    assert "])  # no prompt: the text as it is" in plain and "| default prompt |" not in plain
    # the default prompts (query and document) keep their snippet
    usual = render_model_card(tiny_model("llama", "causal", "mean"))
    assert 'queries = model.encode(["how do I reset my card?"], prompt_name="query")' in usual
    assert 'documents = model.encode(["Open the app, choose Cards, then Change PIN."], prompt_name="document")' \
        in usual


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

    cache, uploaded, _ = fake_hub
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
    # a Hub repo's saved head is checked too: on a mean base peft dropped it without a word
    mean = LLMEmbeddingModel.from_backbone(tiny_backbone_dir, attention="bidirectional", pooling="mean")
    with pytest.raises(ValueError, match=f"the adapters in {REPO} were trained with another head"):
        load_lora(mean, REPO, cache_dir=str(cache))
    with pytest.raises(FileNotFoundError, match="the folder .*adapterz does not exist"):
        load_lora(build(), "./adapterz")


def load_pushed(cache, monkeypatch):
    import huggingface_hub.constants
    from transformers import AutoModel

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return AutoModel.from_pretrained(REPO, cache_dir=str(cache))


def test_push_deletes_the_repos_stale_checkpoint_files(fake_hub, tokenizer, monkeypatch):
    """A sharded push after an unsharded one: the old model.safetensors (which the loader would
    prefer) is deleted in the same commit; files that are not checkpoint files stay."""
    cache, uploaded, repo_files = fake_hub
    repo_files["results/sts.json"] = b"{}"
    repo_files["notes.md"] = b"mine"
    first = tiny_model("llama", "bidirectional", "mean", seed=1)
    first.tokenizer = tokenizer
    first.push_to_hub(REPO)
    assert "model.safetensors" in repo_files
    second = tiny_model("llama", "bidirectional", "mean", seed=2)
    second.push_to_hub(REPO, max_shard_size="2MB")  # and without a tokenizer: the old one goes too
    assert "model.safetensors" in uploaded["_deleted"] and "tokenizer.json" in uploaded["_deleted"]
    assert "model.safetensors" not in repo_files and "tokenizer.json" not in repo_files
    assert len([name for name in repo_files if name.startswith("model-")]) > 1
    assert repo_files["results/sts.json"] == b"{}" and repo_files["notes.md"] == b"mine"
    assert ".gitattributes" in repo_files
    loaded = load_pushed(cache, monkeypatch)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).embeddings, second(input_ids=ids).embeddings)


def test_push_keeps_a_readme_on_the_repo_that_llm_embed_did_not_write(fake_hub):
    _, uploaded, repo_files = fake_hub
    users_card = b"---\nlicense: mit\n---\n# My model\nHand-written description.\n"
    repo_files["README.md"] = users_card
    tiny_model("llama", "bidirectional", "mean").push_to_hub(REPO)
    assert "README.md" not in uploaded and "README.md" not in uploaded.get("_deleted", [])
    assert repo_files["README.md"] == users_card
    assert "model.safetensors" in uploaded


def test_push_replaces_a_card_llm_embed_wrote(fake_hub):
    _, uploaded, repo_files = fake_hub
    tiny_model("llama", "bidirectional", "mean").push_to_hub(REPO)
    assert "| pooling | mean |" in repo_files["README.md"].decode()
    tiny_model("llama", "bidirectional", "last_token").push_to_hub(REPO)
    assert "README.md" in uploaded and "| pooling | last_token |" in repo_files["README.md"].decode()


def test_push_accepts_transformers_keywords(fake_hub):
    _, uploaded, _ = fake_hub
    model = tiny_model("llama", "causal", "mean")
    model.push_to_hub(REPO, commit_message="msg", commit_description="longer text", safe_serialization=True)
    assert uploaded["_commit_message"] == "msg" and uploaded["_commit_description"] == "longer text"
    uploaded.clear()
    with pytest.raises(ValueError, match="safetensors only; safe_serialization=False"):
        model.push_to_hub(REPO, safe_serialization=False)
    assert uploaded == {}  # refused before anything is committed
