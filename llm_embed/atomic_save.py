"""Atomic checkpoint folders: a save leaves the old checkpoint or the new one, whole, never a mix.

``PreTrainedModel.save_pretrained`` writes ``config.json`` first and the weights after it, into the
target folder, and leaves behind whatever an earlier save wrote there. A save that failed while
writing the weights (a full disk) left the new design's config beside the old weights, and a second
save of another shape (sharded after unsharded, without tokenizer after with one) left stale files
that the loader prefers. So every save here is staged:

1. everything is written into a hidden staging folder beside the target (same file system);
2. the staging folder and the target are swapped in one step (``renameat2(RENAME_EXCHANGE)`` on
   Linux; elsewhere two renames, old one first, with a roll-back if the second fails);
3. entries of the old folder that are not part of a checkpoint (training state, logs, the
   ``adapter/`` of a LoRA run, sub-folders, a user's own README) are moved into the new folder; the
   old checkpoint's files are deleted with the old folder.

The target therefore always holds one whole checkpoint; a crash between steps 2 and 3 leaves the
non-checkpoint entries in the hidden ``.<name>.llm_embed-replaced-*`` folder beside it (never deleted
while they are there). A failed write leaves the target untouched and removes the staging folder.
"""

from __future__ import annotations

import ctypes
import errno
import fnmatch
import logging
import os
import shutil
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


def save_atomically(
    target: str | os.PathLike,
    write: Callable[[str], None],
    replaced_names: Iterable[str] = (),
) -> str:
    """Run ``write(folder)`` into a staging folder and swap the result in at ``target`` (see the module
    docstring). ``replaced_names``: further file names of an old folder that belong to the checkpoint
    (the model's code files). Returns the absolute target path."""
    target = check_save_target(target)
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.llm_embed-saving-", dir=parent)
    # mkdtemp makes a private (0700) folder: give the new checkpoint the old one's mode, or the
    # default a plain makedirs would (0777 less the umask).
    if os.path.isdir(target):
        mode = stat.S_IMODE(os.stat(target).st_mode)
    else:
        umask = os.umask(0o022)
        os.umask(umask)
        mode = 0o777 & ~umask
    os.chmod(staging, mode)
    try:
        write(staging)
        old = _swap_in(staging, target, backup_prefix=f".{name}.llm_embed-replaced-")
    except BaseException:
        try:
            shutil.rmtree(staging)
        except OSError as cleanup_error:  # the save's own error matters more; say where the rest lies
            logger.warning("could not remove the staging folder %s after a failed save: %s", staging, cleanup_error)
        raise
    if old is not None:
        try:
            _carry_over(old, target, replaced_names)
        except OSError as error:
            raise OSError(
                f"the new checkpoint is saved in {target}, but moving the old folder's other files (training state, "
                f"logs, sub-folders) into it failed ({error}); they are in {old}: move them back by hand."
            ) from error
    return target


__all__ = ["CHECKPOINT_FILE_PATTERNS", "check_save_target", "is_checkpoint_file", "save_atomically"]
