"""Saves are atomic and exact: a folder holds the old checkpoint or the new one, whole, and nothing
stale; a loaded model does not depend on its source folder staying as it was."""

from __future__ import annotations

import errno
import hashlib
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


def test_save_through_a_symlink_saves_into_its_target_and_keeps_the_link(tmp_path, tokenizer):
    """``latest -> run-3``: the save goes into run-3 (its other files kept), the link stays a link."""
    real, link = tmp_path / "run-3", tmp_path / "latest"
    perturbed("mean", seed=0, tokenizer=tokenizer).save_pretrained(real)
    (real / "trainer_state.json").write_text("{}")
    link.symlink_to("run-3")
    new = perturbed("mean", seed=1, tokenizer=tokenizer)
    new.save_pretrained(link)
    assert link.is_symlink() and os.readlink(link) == "run-3"
    assert (real / "trainer_state.json").read_text() == "{}"
    assert torch.equal(embed(AutoModel.from_pretrained(real)), embed(new))
    assert sorted(os.listdir(tmp_path)) == ["latest", "run-3"]


def sharded_old_checkpoint(folder, tokenizer) -> None:
    """An old checkpoint with two shards (stale after an unsharded save) and files of the user."""
    perturbed("latent_attention", seed=0, tokenizer=tokenizer).save_pretrained(folder, max_shard_size="2MB")
    assert len([n for n in os.listdir(folder) if n.startswith("model-")]) > 1
    (folder / "notes.txt").write_text("mine")
    (folder / "logs").mkdir()
    (folder / "logs" / "run.log").write_text("log")


def assert_new_checkpoint_in_place(folder, new) -> None:
    names = os.listdir(folder)
    assert "model.safetensors" in names and not [n for n in names if n.startswith("model-") or "index" in n]
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "logs" / "run.log").read_text() == "log"
    assert not [n for n in names if ".llm_embed-" in n]
    assert torch.equal(embed(AutoModel.from_pretrained(folder)), embed(new))


@pytest.mark.parametrize("where", ["folder", "sub-folder"])
def test_save_into_the_working_directory_keeps_it(tmp_path, tokenizer, monkeypatch, where):
    """``save_pretrained(".")`` from inside the folder (or a save of an ancestor of the working
    directory) replaces the files, not the folder: the process's working directory stays valid."""
    folder = tmp_path / "model"
    sharded_old_checkpoint(folder, tokenizer)
    inode = os.stat(folder).st_ino
    monkeypatch.chdir(folder if where == "folder" else folder / "logs")
    new = perturbed("latent_attention", seed=1, tokenizer=tokenizer)
    new.save_pretrained("." if where == "folder" else "..")
    assert os.stat(folder).st_ino == inode
    assert os.path.samefile(os.getcwd(), folder if where == "folder" else folder / "logs")
    with open("written-after.txt", "w") as handle:  # the working directory is still a live folder
        handle.write("x")
    assert os.path.isfile(os.path.join(os.getcwd(), "written-after.txt"))
    assert_new_checkpoint_in_place(folder, new)
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_mount_point_saves_file_by_file(tmp_path, tokenizer, monkeypatch):
    """A folder that cannot be swapped (here: reported as a mount point) gets the new files one by one,
    stale checkpoint files removed, other files kept."""
    folder = tmp_path / "volume"
    sharded_old_checkpoint(folder, tokenizer)
    inode = os.stat(folder).st_ino
    monkeypatch.setattr(atomic_save, "_is_mount_point", lambda path: path == str(folder))
    new = perturbed("latent_attention", seed=1, tokenizer=tokenizer)
    new.save_pretrained(folder)
    assert os.stat(folder).st_ino == inode
    assert_new_checkpoint_in_place(folder, new)
    assert sorted(os.listdir(tmp_path)) == ["volume"]


@pytest.mark.parametrize("case", ["parent not writable", "another owner", "a group not ours"])
def test_a_folder_that_cannot_be_swapped_keeping_owner_and_group_is_saved_file_by_file(tmp_path, tokenizer,
                                                                                      monkeypatch, case):
    """A folder under a parent this user cannot write (``/data/<user>/run`` under a root-owned
    ``/data``) failed to save; one owned by another user, or by a group this user is not in, would
    have come back with this user's owner / group after the swap."""
    folder = tmp_path / "run"
    sharded_old_checkpoint(folder, tokenizer)
    if case == "a group not ours" and os.stat(folder).st_uid == 0:
        os.chown(folder, 1000, -1)  # the group check is for a user other than root, who owns the folder
    info = os.stat(folder)
    if case == "parent not writable":
        real_access = os.access
        monkeypatch.setattr(atomic_save.os, "access", lambda path, mode: False if os.path.samefile(path, tmp_path)
                            else real_access(path, mode))
    else:
        monkeypatch.setattr(atomic_save.os, "geteuid", lambda: info.st_uid + 1 if case == "another owner"
                            else info.st_uid)
        monkeypatch.setattr(atomic_save.os, "getegid", lambda: info.st_gid + 1)
        monkeypatch.setattr(atomic_save.os, "getgroups", lambda: [info.st_gid + 1])
    assert atomic_save._file_by_file_reason(str(folder)).split(",")[0] in (
        "its parent folder is not writable", "it belongs to another user", "its group is not one of this user's")
    new = perturbed("latent_attention", seed=1, tokenizer=tokenizer)
    new.save_pretrained(folder)
    assert os.stat(folder).st_ino == info.st_ino
    assert_new_checkpoint_in_place(folder, new)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="changing a folder's group needs root")
def test_the_swapped_folder_keeps_its_group_and_setgid_mode(tmp_path, tokenizer):
    """A run folder shared with a team (``chgrp team; chmod 2770``) came back with root's group."""
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chown(folder, -1, 65534)
    os.chmod(folder, 0o2770)
    perturbed("mean", seed=0, tokenizer=tokenizer).save_pretrained(folder)
    info = os.stat(folder)
    assert (info.st_gid, stat.S_IMODE(info.st_mode)) == (65534, 0o2770)
    assert os.stat(folder / "config.json").st_gid == 65534  # files inherit the setgid folder's group


def test_folder_swap_refused_as_busy_falls_back_to_file_by_file(tmp_path, tokenizer, monkeypatch):
    """A mount point the check does not recognise (EBUSY from the swap) is saved file by file."""
    folder = tmp_path / "volume"
    sharded_old_checkpoint(folder, tokenizer)

    def busy(staging, target, backup_prefix):
        raise OSError(errno.EBUSY, "Device or resource busy", staging)

    monkeypatch.setattr(atomic_save, "_swap_in", busy)
    new = perturbed("latent_attention", seed=1, tokenizer=tokenizer)
    new.save_pretrained(folder)
    assert_new_checkpoint_in_place(folder, new)
    assert sorted(os.listdir(tmp_path)) == ["volume"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
@pytest.mark.parametrize("failing_at", ["first", "sixth", "stale"])
def test_file_by_file_failure_restores_the_old_files(tmp_path, tokenizer, monkeypatch, exchange, failing_at):
    """A failure while the files are put in place (the first or sixth new file, or the removal of a
    stale shard) puts the old files back."""
    folder = tmp_path / "volume"
    sharded_old_checkpoint(folder, tokenizer)
    before = {path.relative_to(folder): path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    monkeypatch.setattr(atomic_save, "_is_mount_point", lambda path: path == str(folder))
    if not exchange:
        monkeypatch.setattr(atomic_save, "_exchange", lambda first, second: False)
    calls = []
    original_rename, original_exchange = os.rename, atomic_save._exchange

    def count(source, destination):
        """Fail the chosen rename or exchange of an entry of the target (in or out)."""
        if str(folder) in (os.path.dirname(source), os.path.dirname(destination)):
            calls.append(destination)
            stale = os.path.basename(source).startswith("model-") and os.path.dirname(source) == str(folder)
            if (failing_at, len(calls)) in (("first", 1), ("sixth", 6)) or (failing_at == "stale" and stale):
                raise OSError(errno.EIO, "Input/output error", destination)

    def failing_rename(source, destination):
        count(source, destination)
        return original_rename(source, destination)

    def failing_exchange(first, second):
        count(first, second)
        return original_exchange(first, second)

    with monkeypatch.context() as patch:
        patch.setattr(atomic_save.os, "rename", failing_rename)
        patch.setattr(atomic_save, "_exchange", failing_exchange)
        with pytest.raises(OSError, match="Input/output error"):
            perturbed("mean", seed=1, tokenizer=tokenizer).save_pretrained(folder)
    after = {path.relative_to(folder): path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    assert after == before
    assert not [n for n in os.listdir(folder) if ".llm_embed-" in n]


def test_file_by_file_failed_write_leaves_the_folder_untouched(tmp_path, tokenizer, monkeypatch):
    folder = tmp_path / "volume"
    sharded_old_checkpoint(folder, tokenizer)
    before = {path.relative_to(folder): path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    monkeypatch.setattr(atomic_save, "_is_mount_point", lambda path: path == str(folder))
    fail_while_writing_weights(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        perturbed("mean", seed=1, tokenizer=tokenizer).save_pretrained(folder)
    after = {path.relative_to(folder): path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    assert after == before
    assert not [n for n in os.listdir(folder) if ".llm_embed-" in n]


def test_real_mount_point_is_saved(tmp_path):
    """The folder is a tmpfs mount (a docker -v volume): renaming it is EBUSY, so the save goes file
    by file; twice, the second replacing the first. Needs a private mount namespace (unshare -m)."""
    import subprocess
    import sys

    volume = tmp_path / "volume"
    volume.mkdir()
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs tmpfs {volume} && umount {volume}"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount in a private namespace here: {probe.stderr.decode()[-200:]}")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = f"""
import os, sys, torch
sys.path.insert(0, {repo!r})
from transformers import AutoModel
from tests.conftest import tiny_model
assert os.path.ismount({str(volume)!r})
ids = torch.tensor([[5, 6, 7, 8]])
for seed in (0, 1):
    model = tiny_model("llama", "bidirectional", "mean", seed=seed, output_dim=8)
    model.save_pretrained({str(volume)!r})
    with torch.no_grad():
        assert torch.equal(AutoModel.from_pretrained({str(volume)!r})(input_ids=ids).embeddings,
                           model(input_ids=ids).embeddings), seed
print("SAVED", sorted(n for n in os.listdir({str(volume)!r}) if ".llm_embed-" in n))
"""
    result = subprocess.run(["unshare", "-m", "sh", "-c", f'mount -t tmpfs tmpfs {volume} && exec "$0" -c "$1"',
                             sys.executable, script], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SAVED []" in result.stdout
    assert sorted(os.listdir(tmp_path)) == ["volume"]


def test_save_keeps_user_files_named_like_package_modules(tmp_path):
    """Only the code files a save writes are checkpoint files: a user's train.py, data.py, cli.py ...
    (names of llm_embed modules that are not shipped) survive."""
    folder = tmp_path / "project"
    folder.mkdir()
    names = ["train.py", "data.py", "cli.py", "corpus.py", "__init__.py", "lora.py", "study.py"]
    for name in names:
        (folder / name).write_text(f"# the user's own {name}\n")
    model = perturbed("mean", seed=0)
    model.save_pretrained(folder)
    model.save_pretrained(folder)  # a second save over the first one, too
    for name in names:
        assert (folder / name).read_text() == f"# the user's own {name}\n", name
    assert (folder / "modeling_llm_embed.py").is_file() and (folder / "packed_attention.py").is_file()


def test_plain_save_after_a_variant_save_drops_the_variant_weights(tmp_path):
    folder = tmp_path / "ckpt"
    perturbed("latent_attention", seed=0).save_pretrained(folder, variant="v1")
    perturbed("latent_attention", seed=1).save_pretrained(folder, variant="v2", max_shard_size="2MB")
    names = os.listdir(folder)
    assert "model.v1.safetensors" not in names and "model.safetensors.index.v2.json" in names
    new = perturbed("latent_attention", seed=2)
    new.save_pretrained(folder)
    assert sorted(n for n in os.listdir(folder) if n.startswith("model") and not n.endswith(".py")) == [
        "model.safetensors"]
    assert torch.equal(embed(AutoModel.from_pretrained(folder)), embed(new))


def test_non_main_rank_passed_positionally_writes_nothing(tmp_path, tokenizer):
    """``save_pretrained(folder, False)``: transformers' second parameter is ``is_main_process``."""
    folder = tmp_path / "ckpt"
    perturbed("mean", seed=0, tokenizer=tokenizer).save_pretrained(folder)
    def digests():  # hashes, not bytes: a failure then prints a short diff (CI=true turns off truncation)
        return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in os.listdir(folder)}

    before = digests()
    perturbed("mean", seed=1, tokenizer=tokenizer).save_pretrained(folder, False)
    assert digests() == before


KILLED_SAVE = """
import os, signal, sys
import llm_embed.atomic_save as atomic_save
from tests.conftest import tiny_model

def killed(folder):  # the process dies (kill -9, power loss) once the weights are written
    real_write(folder)
    os.kill(os.getpid(), signal.SIGKILL)

real_save = atomic_save.save_atomically
def save_atomically(target, write, *args, **kwargs):
    global real_write
    real_write = write
    return real_save(target, killed, *args, **kwargs)

import llm_embed.modeling_llm_embed as modeling
modeling.save_atomically = save_atomically
if sys.argv[2] == "file-by-file":
    atomic_save._file_by_file_reason = lambda target: "a test"
tiny_model("llama", "bidirectional", "mean", seed=1).save_pretrained(sys.argv[1])
"""


@pytest.mark.parametrize("mode", ["folder swap", "file-by-file"])
def test_a_save_killed_midway_leaves_a_staging_folder_the_next_save_removes(tmp_path, mode):
    """A save killed with ``kill -9`` keeps the old checkpoint (whole) but left its staging folder, a
    checkpoint-sized hidden folder that no later save removed. The next save now removes a staging folder
    whose process is gone; one of a live process, of another machine or without the marker is kept."""
    import json
    import socket
    import subprocess
    import sys
    from pathlib import Path

    folder = tmp_path / "ckpt"
    old = perturbed("mean", seed=0)
    old.save_pretrained(folder)
    result = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(folder), mode], capture_output=True, text=True,
                            cwd=Path(__file__).parent.parent, timeout=300)
    assert result.returncode == -9, result.stderr[-2000:]
    where = tmp_path if mode == "folder swap" else folder
    prefix = ".ckpt.llm_embed-saving-" if mode == "folder swap" else ".llm_embed-saving-"
    abandoned = [name for name in os.listdir(where) if name.startswith(prefix)]
    assert len(abandoned) == 1 and (where / abandoned[0] / "model.safetensors").is_file()
    assert torch.equal(embed(AutoModel.from_pretrained(folder)), embed(old))  # the old one, whole

    kept = {"live": {"host": socket.gethostname(), "pid": os.getpid()},
            "elsewhere": {"host": socket.gethostname() + "-other", "pid": 1 << 22}, "no-marker": None}
    for name, owner in kept.items():
        (where / f"{prefix}{name}").mkdir()
        if owner is not None:
            (where / f"{prefix}{name}" / atomic_save.STAGING_MARKER).write_text(json.dumps(owner))
    new = perturbed("mean", seed=2)
    new.save_pretrained(folder)
    assert sorted(name for name in os.listdir(where) if ".llm_embed-" in name) == sorted(prefix + n for n in kept)
    assert torch.equal(embed(AutoModel.from_pretrained(folder)), embed(new))
    assert atomic_save.STAGING_MARKER not in os.listdir(folder)


def test_a_parent_this_user_may_enter_but_not_list_still_saves(tmp_path, monkeypatch):
    """Looking for abandoned staging folders lists the parent: a root-owned ``/data`` of mode 711 (enter,
    not list) must not fail the save that worked before the look existed."""
    folder = tmp_path / "ckpt"
    real_listdir = os.listdir

    def listdir(path="."):
        if os.path.samefile(path, tmp_path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_listdir(path)

    monkeypatch.setattr(atomic_save.os, "listdir", listdir)
    new = perturbed("mean", seed=1)
    new.save_pretrained(folder)
    new.save_pretrained(folder)  # over an existing checkpoint too
    assert torch.equal(embed(AutoModel.from_pretrained(folder)), embed(new))
