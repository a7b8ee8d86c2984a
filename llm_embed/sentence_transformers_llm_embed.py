"""A sentence-transformers input module that runs a whole :class:`LLMEmbeddingModel`, so that a saved
model loads as ``SentenceTransformer(path, trust_remote_code=True)`` and embeds exactly as
``model.encode`` does (same tokenization, EOS, truncation, pooling head, normalisation).

``save_pretrained`` copies this file next to the weights with ``modules.json`` (one module, saved in
the root) and ``config_sentence_transformers.json`` (prompts, default prompt, cosine similarity).
sentence-transformers imports it from the model folder (relative imports only), so llm_embed need
not be installed; sentence-transformers must be.
"""

from __future__ import annotations

import torch
from sentence_transformers.base.modules.input_module import InputModule

from .encoding import pad_batch, resolve_pad_id, tokenize_texts
from .modeling_llm_embed import LLMEmbeddingModel


class LLMEmbeddingSTModule(InputModule):
    """One module: text -> ids (prompt, EOS, truncation as in ``encode``) -> LLMEmbeddingModel -> embedding."""

    save_in_root = True

    def __init__(self, model: LLMEmbeddingModel):
        super().__init__()
        self.model = model

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def max_seq_length(self) -> int:
        return self.model.config.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.model.config.max_seq_length = value

    def get_sentence_embedding_dimension(self) -> int:
        return self.model.config.embedding_dim

    def preprocess(self, inputs, prompt: str | None = None, **kwargs) -> dict[str, torch.Tensor]:
        """Token ids as ``encode`` makes them: the same helpers, the prompt passed as the prefix."""
        config, tokenizer = self.model.config, self.model.tokenizer
        ids = tokenize_texts(tokenizer, list(inputs), config.max_seq_length, config.append_eos, prefix=prompt or "")
        input_ids, attention_mask = pad_batch(ids, resolve_pad_id(tokenizer), config.padding_side)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def tokenize(self, texts, **kwargs):  # sentence-transformers < 6 name
        return self.preprocess(texts, **kwargs)

    def forward(self, features: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor]:
        output = self.model(input_ids=features["input_ids"], attention_mask=features["attention_mask"])
        features["sentence_embedding"] = output.embeddings
        return features

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.model.save_pretrained(output_path)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token=None, cache_folder=None, revision=None,
             local_files_only: bool = False, model_kwargs: dict | None = None, **kwargs) -> LLMEmbeddingSTModule:
        load_kwargs = dict(model_kwargs or {})
        if subfolder:
            load_kwargs["subfolder"] = subfolder
        model = LLMEmbeddingModel.from_pretrained(
            model_name_or_path, token=token, cache_dir=cache_folder, revision=revision,
            local_files_only=local_files_only, **load_kwargs,
        )
        return cls(model)


__all__ = ["LLMEmbeddingSTModule"]
