"""The files that make a saved model folder load as ``SentenceTransformer(folder, trust_remote_code=True)``.

``modules.json`` (one module, saved in the root), ``config_sentence_transformers.json`` (prompts, the
default prompt, cosine similarity) and the module file itself, ``sentence_transformers_llm_embed.py``,
copied from beside this one. That module imports sentence-transformers, which only that loader
needs, so it is copied as a file and never imported by the model's code.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

logger = logging.getLogger(__name__)

SENTENCE_TRANSFORMERS_MODULE = "sentence_transformers_llm_embed"


def write_sentence_transformers_files(model, folder) -> None:
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), SENTENCE_TRANSFORMERS_MODULE + ".py")
    if not os.path.isfile(source):
        # Loaded as remote code: transformers fetched only the files the model imports.
        logger.warning(
            "not writing the sentence-transformers files: %s is not beside this model's code; save from a "
            "process with llm_embed installed to include them",
            SENTENCE_TRANSFORMERS_MODULE + ".py",
        )
        return
    shutil.copyfile(source, os.path.join(folder, SENTENCE_TRANSFORMERS_MODULE + ".py"))
    modules = [{"idx": 0, "name": "0", "path": "", "type": f"{SENTENCE_TRANSFORMERS_MODULE}.LLMEmbeddingSTModule"}]
    settings = {
        "model_type": "SentenceTransformer",
        "prompts": dict(model.config.prompts),
        "default_prompt_name": model.config.default_prompt_name,
        "similarity_fn_name": "cosine",
    }
    for name, content in (("modules.json", modules), ("config_sentence_transformers.json", settings)):
        with open(os.path.join(folder, name), "w", encoding="utf-8") as handle:
            json.dump(content, handle, indent=2)


__all__ = ["SENTENCE_TRANSFORMERS_MODULE", "write_sentence_transformers_files"]
