"""Shared fixtures: tiny random backbones of several architectures, the real SmolLM2 tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

# No network here: make every Hub lookup fail fast instead of retrying (read at import time).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import (
    AutoTokenizer,
    Gemma3TextConfig,
    GemmaConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

import llm_embed  # noqa: F401  (registers the Auto classes)
from llm_embed import LLMEmbeddingConfig, LLMEmbeddingModel

VOCAB = 49152  # SmolLM2's tokenizer, so encode() works on the tiny models too
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

_BASE = dict(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=1024)


def tiny_backbone_config(arch: str, head_dim: int = 8):
    """A tiny random decoder config; sliding-window ones get a window of 4 so that it matters.
    ``head_dim=16`` gives hidden size 64 (flex attention on CUDA needs head dims of at least 16)."""
    _COMMON = dict(_BASE, hidden_size=4 * head_dim)
    if arch == "llama":
        return LlamaConfig(**_COMMON)
    if arch == "mistral":
        return MistralConfig(**_COMMON, sliding_window=4)
    if arch == "qwen2":
        return Qwen2Config(**_COMMON)
    if arch == "qwen3":
        return Qwen3Config(**_COMMON, head_dim=head_dim)
    if arch == "phi3":
        return Phi3Config(**_COMMON, pad_token_id=0)
    if arch == "gemma":
        return GemmaConfig(**_COMMON, head_dim=head_dim)
    if arch == "gemma3":
        return Gemma3TextConfig(**_COMMON, head_dim=head_dim, sliding_window=4,
                                layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    if arch == "mixtral":  # a mixture of experts (fused expert weights, saved one per expert)
        from transformers import MixtralConfig

        return MixtralConfig(**_COMMON, num_local_experts=2, num_experts_per_tok=1)
    if arch == "gpt2":
        return GPT2Config(n_embd=4 * head_dim, n_layer=3, n_head=4, vocab_size=VOCAB, n_positions=1024)
    raise ValueError(arch)


ARCHS = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma3", "gpt2"]
POOLINGS = ["last_token", "mean", "weighted_mean", "latent_attention", "multi_layer"]
ATTENTIONS = ["causal", "bidirectional"]


def tiny_model(arch="llama", attention="bidirectional", pooling="mean", seed=0, attn_implementation="sdpa",
               head_dim=8, **kwargs) -> LLMEmbeddingModel:
    torch.manual_seed(seed)
    config = LLMEmbeddingConfig(backbone_config=tiny_backbone_config(arch, head_dim), attention=attention,
                                pooling=pooling, attn_implementation=attn_implementation, **kwargs)
    return LLMEmbeddingModel(config).eval()


@pytest.fixture(scope="session")
def smollm2_path():
    from llm_embed.bundled import smollm2_backbone_path

    return smollm2_backbone_path()


@pytest.fixture(scope="session")
def tokenizer(smollm2_path):
    return AutoTokenizer.from_pretrained(smollm2_path)


@pytest.fixture()
def no_llm_embed_env(tmp_path):
    """Environment for a subprocess in which ``import llm_embed`` fails (it is shadowed)."""
    shadow = tmp_path / "shadow"
    (shadow / "llm_embed").mkdir(parents=True)
    (shadow / "llm_embed" / "__init__.py").write_text("raise ImportError('llm_embed is not installed here')\n")
    env = dict(os.environ, PYTHONPATH=str(shadow), HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    return env


def run_without_llm_embed(script: str, env: dict, cwd) -> str:
    """Run ``script`` in a fresh interpreter where llm_embed is not importable; returns stdout."""
    import subprocess
    import sys

    guard = ("try:\n    import llm_embed\n    raise SystemExit('llm_embed must not be importable here')\n"
             "except ImportError:\n    pass\n")
    # -P: do not put the working directory (a checkout holding llm_embed/) on sys.path
    result = subprocess.run([sys.executable, "-P", "-c", guard + script], env=env, cwd=cwd, capture_output=True,
                            stdin=subprocess.DEVNULL,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory, tokenizer):
    """A tiny random Llama saved like a pretrained decoder (weights + tokenizer), for from_backbone."""
    from transformers import AutoModel

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    AutoModel.from_config(tiny_backbone_config("llama")).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def triplet_rows(n: int, negatives: int = 1, offset: int = 0) -> list[dict]:
    """Small synthetic (query, positive, negative) rows with learnable structure."""
    topics = ["cat", "car", "tree", "bank", "moon", "song", "rain", "bread", "river", "phone", "chess", "coffee"]
    rows = []
    for i in range(offset, offset + n):
        topic = topics[i % len(topics)]
        others = [topics[(i + j + 1) % len(topics)] for j in range(negatives)]
        row = {"query": f"what about the {topic} {i}?", "positive": f"a text on the {topic} number {i}"}
        if negatives == 1:
            row["negative"] = f"a text on the {others[0]} number {i}"
        elif negatives > 1:
            row["negatives"] = [f"a text on the {o} number {i}" for o in others]
        rows.append(row)
    return rows
