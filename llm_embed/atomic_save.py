"""Atomic checkpoint folders: a save leaves the old checkpoint or the new one, whole, never a mix.

``PreTrainedModel.save_pretrained`` writes ``config.json`` first and the weights after it, into the
target folder, and leaves behind whatever an earlier save wrote there. A save that failed while
writing the weights (a full disk) left the new design's config beside the old weights, and a second
save of another shape (sharded after unsharded, without tokenizer after with one, a plain save after
a ``variant=`` one) left stale files that the loader prefers. So every save here is staged.

The target is first resolved to the real folder (``os.path.realpath``): saving to a link such as
``latest -> run-3`` saves into ``run-3`` and leaves the link a link.

Whole-folder swap (the normal case):

1. everything is written into a hidden staging folder beside the target (same file system);
2. the staging folder and the target are swapped in one step (``renameat2(RENAME_EXCHANGE)`` on
   Linux; elsewhere two renames, old one first, with a roll-back if the second fails);
3. entries of the old folder that are not part of a checkpoint (training state, logs, the
   ``adapter/`` of a LoRA run, sub-folders, a user's own README or scripts) are moved into the new
   folder; the old checkpoint's files are deleted with the old folder.

The target therefore always holds one whole checkpoint; a crash between steps 2 and 3 leaves the
non-checkpoint entries in the hidden ``.<name>.llm_embed-replaced-*`` folder beside it (never deleted
while they are there). A failed write leaves the target untouched and removes the staging folder; a
process killed while writing leaves it, and the next save to the target removes it (:data:`STAGING_MARKER`).

File-by-file replacement (where the folder itself cannot or must not be swapped): a mount point (a
``docker -v`` volume, a Kubernetes volume: renaming it is ``EBUSY``, also detected from the swap's
error), or the process's working directory or an ancestor of it (swapping would leave the process
in a deleted folder). The save is then written into a hidden staging folder *inside* the target
(``.llm_embed-saving-*``, same file system), and each of its files is put in place by one rename
(``renameat2(RENAME_EXCHANGE)`` where available, keeping the old file; two renames elsewhere); then
the old checkpoint files that the new save does not write are moved aside, and at the end the old
files are deleted. What this gives:

- each file is replaced atomically: a reader sees the old file or the new one, never half a file;
- the set of files is not: a reader during those renames, or the folder after a crash (power loss,
  ``SIGKILL``) in the middle of them, can see new files beside old ones (``config.json`` is put in
  place last, stale files are removed after the new ones are in place);
- a failed write (a full disk) leaves the folder untouched; an error while the files are put in
  place puts the old files back (renames only, so the old bytes are never lost: if putting them
  back fails too, the error names the hidden folders that hold them);
- the folder itself (its inode, mount, permissions, the working directory in it) stays.

The swapped-in folder gets the old one's mode, owner and group (the owner only for root). Where
that cannot be done, the save goes file by file instead: a folder owned by another user, or whose
group is not one of this user's, or whose parent folder is not writable (``/data`` owned by root
holding ``/data/<user>/run``). ACLs and extended attributes of the folder itself are not copied.

Files other than checkpoint files are kept in both modes.
"""

from __future__ import annotations

import ctypes
import errno
import fnmatch
import json
import logging
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable

logger = logging.getLogger(__name__)

# Files a save of a model, its tokenizer and its sentence-transformers description write. In a folder
# being replaced, these belong to the old checkpoint and go; anything else is the user's and stays.
CHECKPOINT_FILE_PATTERNS = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model-*-of-*.bin",
    "pytorch_model.bin.index.json",
    # the same files of a ``variant=`` save: model.<variant>.safetensors, model.<variant>-00001-of-00002.safetensors,
    # model.safetensors.index.<variant>.json (transformers' ``_add_variant``)
    "model.*.safetensors",
    "model.safetensors.index.*.json",
    "pytorch_model.*.bin",
    "pytorch_model.bin.index.*.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
    "modules.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
)

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def check_save_target(target: str | os.PathLike) -> str:
    """The absolute target path; a clear error (before anything is written) when it is not a folder."""
    path = os.path.abspath(os.fspath(target))
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(
            f"cannot save the model to {path}: it is a file, not a folder. Pass a folder path (it is created "
            "if missing), or move the file away."
        )
    return path


def is_checkpoint_file(name: str, extra_names: Iterable[str] = ()) -> bool:
    """Whether an entry of an old checkpoint folder belongs to the checkpoint (and is replaced)."""
    return name in set(extra_names) or any(fnmatch.fnmatchcase(name, pattern) for pattern in CHECKPOINT_FILE_PATTERNS)


def _exchange(first: str, second: str) -> bool:
    """Swap two paths in one system call (Linux ``renameat2``); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if function is None:  # glibc < 2.28, or another libc without the wrapper
        return False
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    result = function(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):  # kernel or file system lacks it
        return False
    raise OSError(code, os.strerror(code), first, None, second)


def _swap_in(staging: str, target: str, backup_prefix: str) -> str | None:
    """Put ``staging`` at ``target``; returns where the old folder went (None if there was none)."""
    if not os.path.exists(target):
        os.rename(staging, target)
        return None
    if _exchange(staging, target):
        return staging  # the old folder now sits at the staging path
    backup = tempfile.mkdtemp(prefix=backup_prefix, dir=os.path.dirname(target))
    os.rmdir(backup)  # only the unique name is needed
    os.rename(target, backup)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(backup, target)
        raise
    return backup


def _carry_over(old: str, target: str, replaced_names: Iterable[str]) -> None:
    """Move the old folder's entries that are not checkpoint files into the new one, then delete it."""
    replaced = set(replaced_names)
    written = set(os.listdir(target))
    for name in sorted(os.listdir(old)):
        path = os.path.join(old, name)
        if name in written or (os.path.isfile(path) and is_checkpoint_file(name, replaced)):
            continue
        os.rename(path, os.path.join(target, name))
    shutil.rmtree(old)


def _is_mount_point(path: str) -> bool:
    """Whether ``path`` (a real path) is a mount point: ``os.path.ismount``, which misses a bind mount
    of a folder of the same file system (a ``docker -v`` volume can be one), or listed as one in
    ``/proc/self/mountinfo`` (Linux)."""
    if os.path.ismount(path):
        return True
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:  # not Linux: ismount is all there is; a busy swap still falls back (EBUSY)
        return False
    # field 5 is the mount point, with space, tab, newline and backslash written as octal escapes
    mount_points = {
        re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), line.split(" ")[4])
        for line in lines
        if line.count(" ") >= 4
    }
    return path in mount_points


def _working_directory() -> str | None:
    """The process's working directory as a real path; None when it was deleted (then no save can
    be inside it)."""
    try:
        return os.path.realpath(os.getcwd())
    except FileNotFoundError:
        return None


def _file_by_file_reason(target: str) -> str | None:
    """Why the folder ``target`` (a real path) must not be swapped as a whole, or None."""
    if not os.path.isdir(target):
        return None
    if _is_mount_point(target):
        return "it is a mount point"
    cwd = _working_directory()
    if cwd is not None and (cwd == target or cwd.startswith(target.rstrip(os.sep) + os.sep)):
        return "this process's working directory is inside it"
    if not os.access(os.path.dirname(target), os.W_OK | os.X_OK):
        return "its parent folder is not writable, so no staging folder can be made beside it"
    info = os.stat(target)
    if os.geteuid() != 0 and info.st_uid != os.geteuid():
        return "it belongs to another user, and a folder swapped in would belong to this one"
    if os.geteuid() != 0 and info.st_gid not in (os.getegid(), *os.getgroups()):
        return "its group is not one of this user's, and a folder swapped in could not keep it"
    return None


#: A file in a staging folder while it holds only the new save's partial files, naming the saving process:
#: removed just before the folder is swapped in or its files put in place (from then on the folder may hold
#: the old checkpoint's files). A folder that still has it, whose process is gone (``kill -9``, power loss),
#: is removed by the next save there (:func:`_remove_abandoned_staging`); every other folder is kept.
STAGING_MARKER = ".llm_embed-staging.json"


def _mark_staging(staging: str) -> None:
    with open(os.path.join(staging, STAGING_MARKER), "w", encoding="utf-8") as handle:
        json.dump({"host": socket.gethostname(), "pid": os.getpid()}, handle)


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: alive
        return False
    return False


def _remove_abandoned_staging(folder: str, prefix: str) -> None:
    """Remove the staging folders in ``folder`` named ``prefix*`` that a save on this machine left when its
    process died before swapping them in (each holds the marker naming a process that is gone): a
    checkpoint-sized folder each, which nothing else would ever remove. A folder without the marker, of a
    live process, or of another machine (a shared file system) is kept."""
    try:
        names = [name for name in os.listdir(folder) if name.startswith(prefix)]
    except (FileNotFoundError, PermissionError):  # no folder yet, or one this user may enter but not list
        return  # (a root-owned parent with mode 711): nothing it could remove there either
    host = socket.gethostname()
    for name in names:
        staging = os.path.join(folder, name)
        try:
            with open(os.path.join(staging, STAGING_MARKER), encoding="utf-8") as handle:
                owner = json.load(handle)
        except (FileNotFoundError, NotADirectoryError):
            continue  # not (or no longer) only the new files of a save
        except (OSError, ValueError) as error:
            logger.warning("kept %s: its staging marker could not be read (%s)", staging, error)
            continue
        if owner.get("host") == host and isinstance(owner.get("pid"), int) and _process_gone(owner["pid"]):
            logger.warning("removing %s, left by a save that did not finish (process %d is gone)", staging,
                           owner["pid"])
            shutil.rmtree(staging)


def _remove_staging(staging: str) -> None:
    """Remove a failed save's staging folder; the save's own error matters more, so a failure here
    is logged with where the rest lies (the caller re-raises the save's error)."""
    try:
        shutil.rmtree(staging)
    except OSError as cleanup_error:
        logger.warning("could not remove the staging folder %s after a failed save: %s", staging, cleanup_error)


class _FolderBusy(OSError):
    """The folder could not be renamed (``EBUSY``): it must be saved file by file."""


def _save_folder_swap(target: str, write: Callable[[str], None], replaced_names: tuple[str, ...]) -> None:
    """The whole-folder swap (module docstring, first mode)."""
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.llm_embed-saving-", dir=parent)
    # mkdtemp makes a private (0700) folder: give the new checkpoint the old one's group and mode
    # (group first: files written next inherit a setgid folder's group; chown may clear setgid), or
    # the default a plain makedirs would (0777 less the umask). _file_by_file_reason has checked that
    # the group can be kept; the owner is this user's (or kept, for root).
    if os.path.isdir(target):
        info = os.stat(target)
        os.chown(staging, info.st_uid if os.geteuid() == 0 else -1, info.st_gid)
        mode = stat.S_IMODE(info.st_mode)
    else:
        umask = os.umask(0o022)
        os.umask(umask)
        mode = 0o777 & ~umask
    os.chmod(staging, mode)
    try:
        _mark_staging(staging)
        write(staging)
        os.remove(os.path.join(staging, STAGING_MARKER))  # the swap may leave the old folder at this path
        try:
            old = _swap_in(staging, target, backup_prefix=f".{name}.llm_embed-replaced-")
        except OSError as error:
            if error.errno == errno.EBUSY:  # a mount point that _is_mount_point did not recognise
                raise _FolderBusy(error.errno, error.strerror, error.filename, None, error.filename2) from error
            raise
    except BaseException:
        _remove_staging(staging)
        raise
    if old is not None:
        try:
            _carry_over(old, target, replaced_names)
        except OSError as error:
            raise OSError(
                f"the new checkpoint is saved in {target}, but moving the old folder's other files (training state, "
                f"logs, sub-folders) into it failed ({error}); they are in {old}: move them back by hand."
            ) from error


def _put_back(done: list[tuple[str, str]], target: str, staging: str, aside: str) -> None:
    """Undo the renames of :func:`_install_file_by_file` in reverse order (renames only)."""
    for kind, name in reversed(done):
        path = os.path.join(target, name)
        if kind == "exchanged":  # the old entry sits at the staging path: exchange again
            if not _exchange(os.path.join(staging, name), path):
                raise OSError(errno.ENOTSUP, "renameat2 stopped working while undoing a save", path)
        elif kind == "added":
            os.rename(path, os.path.join(staging, name))
        elif kind == "moved":
            os.rename(path, os.path.join(staging, name))
            os.rename(os.path.join(aside, name), path)
        else:  # "removed": a stale checkpoint file moved aside
            os.rename(os.path.join(aside, name), path)


def _install_file_by_file(target: str, staging: str, replaced_names: tuple[str, ...]) -> None:
    """Put every entry of ``staging`` (inside ``target``) in place by renames, then move the old
    checkpoint files the new save does not have aside; the old entries end up in ``staging`` (after
    an exchange) or in a second hidden folder, deleted at the end, put back on an error."""
    aside = tempfile.mkdtemp(prefix=".llm_embed-replaced-", dir=target)
    hidden = {os.path.basename(staging), os.path.basename(aside)}
    # config.json last: until it is in place, a loader reads the old config
    names = sorted(os.listdir(staging), key=lambda name: (name == "config.json", name))
    stale = [
        name for name in sorted(os.listdir(target))
        if name not in hidden and name not in names and os.path.isfile(os.path.join(target, name))
        and is_checkpoint_file(name, replaced_names)
    ]
    done: list[tuple[str, str]] = []
    try:
        for name in names:
            new, path = os.path.join(staging, name), os.path.join(target, name)
            if not os.path.lexists(path):
                os.rename(new, path)
                done.append(("added", name))
            elif _exchange(new, path):
                done.append(("exchanged", name))
            else:
                os.rename(path, os.path.join(aside, name))
                try:
                    os.rename(new, path)
                except BaseException:
                    os.rename(os.path.join(aside, name), path)
                    raise
                done.append(("moved", name))
        for name in stale:
            os.rename(os.path.join(target, name), os.path.join(aside, name))
            done.append(("removed", name))
    except BaseException as error:
        try:
            _put_back(done, target, staging, aside)
        except OSError as undo_error:
            raise OSError(
                f"saving into {target} failed ({error}), and putting the old files back failed too ({undo_error}): "
                f"the old checkpoint's files are in {staging} and {aside}, the new ones partly in {target}; "
                "move them back by hand."
            ) from error
        _remove_staging(staging)
        _remove_staging(aside)
        raise
    for folder in (staging, aside):
        try:
            shutil.rmtree(folder)
        except OSError as error:
            raise OSError(
                f"the new checkpoint is saved in {target}, but deleting the old checkpoint's files in {folder} "
                f"failed ({error}); delete that folder by hand."
            ) from error


def _save_file_by_file(target: str, write: Callable[[str], None], replaced_names: tuple[str, ...]) -> None:
    """The file-by-file replacement (module docstring, second mode)."""
    staging = tempfile.mkdtemp(prefix=".llm_embed-saving-", dir=target)
    try:
        _mark_staging(staging)
        write(staging)
        os.remove(os.path.join(staging, STAGING_MARKER))  # putting files in place moves old ones here
    except BaseException:
        _remove_staging(staging)
        raise
    _install_file_by_file(target, staging, replaced_names)


def save_atomically(
    target: str | os.PathLike,
    write: Callable[[str], None],
    replaced_names: Iterable[str] = (),
) -> str:
    """Run ``write(folder)`` into a staging folder and put the result in place at ``target``: the
    whole folder swapped, or file by file where the folder is a mount point or holds the working
    directory (see the module docstring for what each mode guarantees). ``replaced_names``: further
    file names of an old folder that belong to the checkpoint (the model's code files). Returns the
    real path of the target (a symbolic link resolved)."""
    target = os.path.realpath(check_save_target(target))
    replaced_names = tuple(replaced_names)
    parent, name = os.path.split(target)
    _remove_abandoned_staging(parent, f".{name}.llm_embed-saving-")  # a folder swap's
    _remove_abandoned_staging(target, ".llm_embed-saving-")  # a file-by-file save's
    reason = _file_by_file_reason(target)
    if reason is not None:
        logger.info("saving into %s file by file: %s, so the folder itself is not swapped", target, reason)
        _save_file_by_file(target, write, replaced_names)
        return target
    try:
        _save_folder_swap(target, write, replaced_names)
    except _FolderBusy as error:
        logger.warning(
            "cannot swap %s as a whole (%s; a mount point?): writing the save again, into the folder file by file",
            target, error,
        )
        _save_file_by_file(target, write, replaced_names)
    return target


__all__ = ["CHECKPOINT_FILE_PATTERNS", "check_save_target", "is_checkpoint_file", "save_atomically"]
