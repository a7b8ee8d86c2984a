"""Pushing a model to the Hugging Face Hub: everything ``save_pretrained`` writes, in one commit;
and finding a saved model's files (a local folder or a Hub repo) before ``from_pretrained`` loads it.

Unlike transformers' generic ``push_to_hub``, which uploads what the model's own ``save_pretrained``
writes with a generic card, this uploads the embedding model's card (design, usage, evaluation
results), the tokenizer, the code files for ``trust_remote_code`` and the sentence-transformers
files, so that the repo loads with ``AutoModel``, ``SentenceTransformer`` and mteb. The commit also
deletes the repo's checkpoint files that this push does not write (an earlier unsharded
``model.safetensors`` beside new shards would otherwise win on load), and keeps a README.md on the
repo that llm_embed did not write, as a local save does.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from .atomic_save import is_checkpoint_file


def has_saved_file(name_or_path, filename: str, hub_kwargs: dict) -> bool:
    """Whether a local folder or Hub repo holds ``filename``, with the Hub arguments of a
    ``from_pretrained`` call (``trust_remote_code`` is not one of the file lookup's). A Hub that
    cannot be reached counts as "no" here: use it for optional files, once the model itself is found."""
    from transformers.utils import cached_file

    kwargs = {key: value for key, value in hub_kwargs.items() if key != "trust_remote_code"}
    found = cached_file(
        name_or_path,
        filename,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **kwargs,
    )
    return found is not None


def saved_config_file(name_or_path, hub_kwargs: dict) -> str | None:
    """The local path of the ``config.json`` of a folder or Hub repo (downloaded if needed), None when
    it holds none. Unlike :func:`has_saved_file`, a Hub that cannot be reached (offline, no network)
    or a repo that does not exist is an error: transformers' ``OSError`` names that cause, which
    "holds no config.json" would hide."""
    from transformers.utils import CONFIG_NAME, cached_file

    kwargs = {key: value for key, value in hub_kwargs.items() if key != "trust_remote_code"}
    try:
        # With both _raise_exceptions flags left on, transformers returns None only for a missing config.json.
        return cached_file(name_or_path, CONFIG_NAME, **kwargs)
    except OSError as error:
        path = os.fspath(name_or_path)
        if os.path.exists(path):
            raise
        # A name that is no local folder was looked up on the Hub; it may be a mistyped local path
        # ("models/my-embed" run from the wrong directory), which transformers' message does not consider.
        raise OSError(
            f"{error}\nNo local folder {os.path.abspath(path)} exists either: if {path!r} was meant as a local "
            "path, check its spelling and the working directory."
        ) from error


def recorded_location(name_or_path):
    """A model or backbone as a record names it (``llm_embed_base.json``, ``llm_embed_run.json``, the
    ``run.json`` of ``llm-embed-encode``): an existing local path as its absolute, resolved path, so that the
    record reads the same from any folder and whichever command wrote it; a Hub id, or None (the bundled
    backbone), as given."""
    if name_or_path is None or not os.path.exists(name_or_path):
        return name_or_path
    return os.path.realpath(name_or_path)


def expand_home(name_or_path):
    """``~/models/x`` as the user's folder (a path typed into Python is not expanded by a shell, and
    transformers looks it up as given); anything else as it is."""
    if isinstance(name_or_path, (str, os.PathLike)) and os.fspath(name_or_path).startswith("~"):
        return os.path.expanduser(os.fspath(name_or_path))
    return name_or_path


def check_local_path(name_or_path) -> None:
    """Refuse a path that does not exist and that is meant as a local folder, at once: transformers
    would take it for a Hub repo id and answer "Repo id must be in the form ..." (``/nope/model``) or
    wait for the network (``out/typo``). A path is meant as local when it cannot be a repo id (absolute,
    starting with ``.`` or ``~``, a backslash, more than one ``/``, a trailing ``/``) or when it is
    ``a/b`` with ``a`` a local folder."""
    if name_or_path is None:  # from_pretrained(None, config=..., state_dict=...): nothing to find
        return
    path = os.fspath(name_or_path)
    if os.path.exists(path):
        return
    parts = path.replace("\\", "/").split("/")
    why = None
    if os.path.isabs(path) or path.startswith((".", "~")) or "\\" in path or len(parts) > 2 or path.endswith("/"):
        why = "this is a local path: a Hub repo id has the form 'name' or 'org/name'"
    elif len(parts) == 2 and os.path.isdir(parts[0]):
        why = (f"{parts[0]!r} is a local folder, so this is read as a path inside it, not as a Hub repo id; "
               "to load that repo, run from a working directory without that folder")
    if why is not None:
        raise FileNotFoundError(
            f"cannot load {path!r}: the folder {os.path.abspath(path)} does not exist ({why}). Check the path."
        )


#: push_model_to_hub's arguments that save_pretrained(..., push_to_hub=True) passes on to it.
PUSH_ARGUMENTS = ("repo_id", "commit_message", "commit_description", "private", "token", "revision", "create_pr",
                  "license", "evaluation_results", "tags")


def check_safe_serialization(value) -> None:
    if value is not True:
        raise ValueError(
            f"llm_embed saves weights as safetensors only; safe_serialization={value!r} (pytorch_model.bin) is not "
            "supported: drop the argument."
        )


def push_model_to_hub(
    model,
    repo_id: str,
    *,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str = "5GB",
    safe_serialization: bool = True,
    license: str | None = None,
    evaluation_results: dict | None = None,
    tags: list[str] | None = None,
):
    """Save ``model`` into a temporary folder and commit every file of it to ``repo_id``, deleting the
    repo's checkpoint files this save does not write, in the same commit; returns the commit info.
    ``revision`` (a branch, created if missing), ``create_pr``, ``commit_description`` as in
    huggingface_hub. A README.md on the repo that llm_embed did not write is kept (not uploaded over).
    ``safe_serialization`` is accepted for transformers' signature; only safetensors are written."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    check_safe_serialization(safe_serialization)
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision is not None and not create_pr:
        api.create_branch(repo_id=repo_id, branch=revision, exist_ok=True)
    repo_files = api.list_repo_files(repo_id, revision=revision)
    card = dict(repo_id=repo_id, license=license, evaluation_results=evaluation_results, tags=tags)
    with tempfile.TemporaryDirectory() as workspace:
        folder = os.path.join(workspace, "model")
        os.makedirs(folder)
        repo_readme = None
        if "README.md" in repo_files:
            # In the folder before the save, so that save_pretrained decides as for a local folder: a card
            # llm_embed wrote is replaced, anyone else's is kept.
            downloaded = api.hf_hub_download(repo_id, "README.md", revision=revision,
                                             cache_dir=os.path.join(workspace, "hub-cache"))
            shutil.copyfile(downloaded, os.path.join(folder, "README.md"))
            with open(downloaded, "rb") as handle:
                repo_readme = handle.read()
        model.save_pretrained(folder, max_shard_size=max_shard_size, model_card=card)
        names = sorted(name for name in os.listdir(folder) if os.path.isfile(os.path.join(folder, name)))
        if repo_readme is not None:
            with open(os.path.join(folder, "README.md"), "rb") as handle:
                if handle.read() == repo_readme:
                    names.remove("README.md")  # the repo's own card, kept: nothing to upload
        operations = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=os.path.join(folder, name)) for name in names
        ]
        operations += [
            CommitOperationDelete(path_in_repo=name)
            for name in sorted(repo_files)
            if "/" not in name and name not in names and is_checkpoint_file(name)
        ]
        return api.create_commit(
            repo_id=repo_id,
            operations=operations,
            commit_message=commit_message or "Upload llm_embed model",
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr,
        )


__all__ = ["check_local_path", "check_safe_serialization", "has_saved_file", "push_model_to_hub", "saved_config_file"]
