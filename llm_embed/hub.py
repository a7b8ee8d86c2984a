"""Pushing a model to the Hugging Face Hub: everything ``save_pretrained`` writes, in one commit.

Unlike transformers' generic ``push_to_hub``, which uploads what the model's own ``save_pretrained``
writes with a generic card, this uploads the embedding model's card (design, usage, evaluation
results), the tokenizer, the code files for ``trust_remote_code`` and the sentence-transformers
files, so that the repo loads with ``AutoModel``, ``SentenceTransformer`` and mteb.
"""

from __future__ import annotations

import os
import tempfile


def has_saved_file(name_or_path, filename: str, hub_kwargs: dict) -> bool:
    """Whether a local folder or Hub repo holds ``filename``, with the Hub arguments of a
    ``from_pretrained`` call (``trust_remote_code`` is not one of the file lookup's)."""
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


def push_model_to_hub(
    model,
    repo_id: str,
    *,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str = "5GB",
    license: str | None = None,
    evaluation_results: dict | None = None,
    tags: list[str] | None = None,
):
    """Save ``model`` into a temporary folder and commit every file of it to ``repo_id``; returns the
    commit info. ``revision`` (a branch, created if missing) and ``create_pr`` as in huggingface_hub."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    card = dict(repo_id=repo_id, license=license, evaluation_results=evaluation_results, tags=tags)
    with tempfile.TemporaryDirectory() as workspace:
        folder = os.path.join(workspace, "model")
        model.save_pretrained(folder, max_shard_size=max_shard_size, model_card=card)
        operations = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=os.path.join(folder, name))
            for name in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, name))
        ]
        if revision is not None and not create_pr:
            api.create_branch(repo_id=repo_id, branch=revision, exist_ok=True)
        return api.create_commit(
            repo_id=repo_id,
            operations=operations,
            commit_message=commit_message or "Upload llm_embed model",
            revision=revision,
            create_pr=create_pr,
        )


__all__ = ["has_saved_file", "push_model_to_hub"]
