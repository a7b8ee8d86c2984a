"""llm_embed: turn any decoder LLM into a text-embedding model, the Hugging Face way.

``import llm_embed`` registers :class:`LLMEmbeddingConfig` / :class:`LLMEmbeddingModel` with
``AutoConfig`` / ``AutoModel`` and marks them for ``auto_map``, so saved checkpoints also load with
``trust_remote_code=True`` where this package is not installed.
"""

from transformers import AutoConfig, AutoModel

from .configuration_llm_embed import ATTENTION_MODES, LLMEmbeddingConfig
from .modeling_llm_embed import LLMEmbeddingModel, LLMEmbeddingOutput
from .pooling import POOLING_HEADS, PoolingHead, register_pooling_head

__version__ = "0.1.0"

AutoConfig.register(LLMEmbeddingConfig.model_type, LLMEmbeddingConfig, exist_ok=True)
AutoModel.register(LLMEmbeddingConfig, LLMEmbeddingModel, exist_ok=True)
LLMEmbeddingConfig.register_for_auto_class()
LLMEmbeddingModel.register_for_auto_class("AutoModel")

__all__ = [
    "ATTENTION_MODES",
    "LLMEmbeddingConfig",
    "LLMEmbeddingModel",
    "LLMEmbeddingOutput",
    "POOLING_HEADS",
    "PoolingHead",
    "register_pooling_head",
]
