"""Saves are atomic and exact: a folder holds the old checkpoint or the new one, whole, and nothing
stale; a loaded model does not depend on its source folder staying as it was."""

from __future__ import annotations

import errno
import os
import shutil
import stat

import pytest
import torch
from transformers import AutoModel

import llm_embed.atomic_save as atomic_save
from llm_embed import LLMEmbeddingModel

from .conftest import tiny_model

TEXTS = ["how do I reset my card?", "Branches open at 9am."]


def perturbed(pooling: str, seed: int, tokenizer=None) -> LLMEmbeddingModel:
    model = tiny_model("llama", "bidirectional", pooling, seed=seed)
    if tokenizer is not None:
        model.tokenizer = tokenizer
    return model


def embed(model) -> torch.Tensor:
    ids = torch.tensor([[5, 17, 99, 3, 8], [44, 12, 7, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).embeddings


def leftovers(parent) -> list[str]:
    return sorted(name for name in os.listdir(parent) if ".llm_embed-" in name)


def fail_while_writing_weights(monkeypatch):
    """Make the weights write stop halfway, as on a full disk: half a file, then ENOSPC."""
    import transformers.modeling_utils as modeling_utils

    original = modeling_utils.safe_save_file

    def half_then_fail(tensors, filename, metadata=None):
        original(tensors, filename, metadata=metadata)
        size = os.path.getsize(filename)
        with open(filename, "r+b") as handle:
            handle.truncate(size // 2)
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(modeling_utils, "safe_save_file", half_then_fail)


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_failed_save_keeps_the_old_checkpoint_whole(tmp_path, tokenizer, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(atomic_save, "_exchange", lambda first, second: False)
    folder = tmp_path / "ckpt"
    old = perturbed("mean", seed=0, tokenizer=tokenizer)
    old.save_pretrained(folder)
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    new = perturbed("multi_layer", seed=1, tokenizer=tokenizer)  # another design: config and weights differ
    with monkeypatch.context() as patch:
        fail_while_writing_weights(patch)
        with pytest.raises(OSError, match="No space left"):
            new.save_pretrained(folder)
    after = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    assert after == before
    assert leftovers(tmp_path) == []
    reloaded = AutoModel.from_pretrained(folder)
    assert reloaded.config.pooling == "mean"
    assert torch.equal(embed(reloaded), embed(old))
    # the same save succeeds once the disk is fine again, and replaces the design whole
    new.save_pretrained(folder)
    reloaded = AutoModel.from_pretrained(folder)
    assert reloaded.config.pooling == "multi_layer" and torch.equal(embed(reloaded), embed(new))
    assert leftovers(tmp_path) == []


def test_failed_first_save_leaves_no_folder(tmp_path, monkeypatch):
    fail_while_writing_weights(monkeypatch)
    with pytest.raises(OSError):
        perturbed("mean", seed=0).save_pretrained(tmp_path / "new")
    assert os.listdir(tmp_path) == []


def test_save_without_tokenizer_over_one_with_drops_the_old_tokenizer(tmp_path, tokenizer):
    folder = tmp_path / "ckpt"
    perturbed("mean", seed=0, tokenizer=tokenizer).save_pretrained(folder)
    assert (folder / "tokenizer.json").is_file()
    perturbed("mean", seed=1).save_pretrained(folder)
    tokenizer_files = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"}
    assert not tokenizer_files & set(os.listdir(folder))
    reloaded = AutoModel.from_pretrained(folder)
    with pytest.raises(ValueError, match="has no tokenizer"):
        reloaded.encode(TEXTS)


def test_sharded_save_over_unsharded_loads_the_new_weights(tmp_path):
    folder = tmp_path / "ckpt"
    perturbed("latent_attention", seed=0).save_pretrained(folder)
    new = perturbed("latent_attention", seed=1)
    new.save_pretrained(folder, max_shard_size="2MB")
    names = os.listdir(folder)
    assert "model.safetensors" not in names and "model.safetensors.index.json" in names
    assert len([n for n in names if n.startswith("model-")]) > 1
    assert torch.equal(embed(AutoModel.from_pretrained(folder)), embed(new))
    # and back: unsharded over sharded leaves no stale shards or index
    newer = perturbed("latent_attention", seed=2)
    newer.save_pretrained(folder)
    assert not [n for n in os.listdir(folder) if n.startswith("model-") or n.endswith(".index.json")]
    assert torch.equal(embed(AutoModel.from_pretrained(folder)), embed(newer))


def test_save_keeps_files_that_are_not_part_of_a_checkpoint(tmp_path, tokenizer):
    """Training state, logs, sub-folders (the Trainer's checkpoint-N, a LoRA adapter/) and a user's
    own README survive a save into the same folder; the folder keeps its permissions."""
    folder = tmp_path / "out"
    perturbed("mean", seed=0, tokenizer=tokenizer).save_pretrained(folder)
    (folder / "trainer_state.json").write_text("{}")
    (folder / "checkpoint-5").mkdir()
    (folder / "checkpoint-5" / "optimizer.pt").write_bytes(b"state")
    (folder / "README.md").write_text("# my own card\n")
    os.chmod(folder, 0o750)
    perturbed("mean", seed=1, tokenizer=tokenizer).save_pretrained(folder)
    assert (folder / "trainer_state.json").read_text() == "{}"
    assert (folder / "checkpoint-5" / "optimizer.pt").read_bytes() == b"state"
    assert (folder / "README.md").read_text() == "# my own card\n"
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o750
    assert leftovers(tmp_path) == []


def test_new_folder_gets_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        perturbed("mean", seed=0).save_pretrained(tmp_path / "ckpt")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "ckpt").st_mode) == 0o755


def test_saving_to_a_file_is_refused_before_writing(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"keep me")
    with pytest.raises(NotADirectoryError, match="it is a file, not a folder"):
        perturbed("mean", seed=0).save_pretrained(path)
    assert path.read_bytes() == b"keep me"
    assert sorted(os.listdir(tmp_path)) == ["model.bin"]


def test_loaded_model_does_not_depend_on_its_source_folder(tmp_path, tokenizer):
    """The tokenizer is read with the weights: overwriting the folder with another model (another
    tokenizer) before the first encode changes nothing, and deleting it does not break a later save."""
    folder = tmp_path / "ckpt"
    original = perturbed("mean", seed=0, tokenizer=tokenizer)
    original.save_pretrained(folder)
    expected = original.encode(TEXTS)
    loaded = AutoModel.from_pretrained(folder)
    other_tokenizer = tokenizer.__class__.from_pretrained(folder)
    other_tokenizer.add_tokens(["how do I reset my card?"])  # the whole first text becomes one token
    other = perturbed("mean", seed=0)
    other.resize_token_embeddings(len(other_tokenizer))
    other.tokenizer = other_tokenizer
    other.save_pretrained(folder)
    assert (loaded.encode(TEXTS) == expected).all()
    shutil.rmtree(folder)
    loaded.save_pretrained(tmp_path / "copy")
    again = AutoModel.from_pretrained(tmp_path / "copy")
    assert (again.encode(TEXTS) == expected).all()


def test_damaged_tokenizer_file_fails_at_load_naming_the_checkpoint(tmp_path, tokenizer):
    folder = tmp_path / "ckpt"
    perturbed("mean", seed=0, tokenizer=tokenizer).save_pretrained(folder)
    (folder / "tokenizer.json").write_text('{"version": "1.0", "truncat')
    with pytest.raises(ValueError, match="tokenizer saved with the checkpoint .* cannot be loaded"):
        AutoModel.from_pretrained(folder)
