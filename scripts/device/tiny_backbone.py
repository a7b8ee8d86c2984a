"""Write a tiny random Llama (2 layers, hidden 64) with the bundled SmolLM2 tokenizer to a folder, for
CPU dry runs of the device scripts: ``python scripts/device/tiny_backbone.py .gpu/tiny`` then
``bash scripts/device/dry_run.sh``. Nothing in it is trained; it only exercises the code paths."""

import sys

import torch
from transformers import AutoModel, AutoTokenizer, LlamaConfig

from llm_embed.bundled import smollm2_backbone_path

folder = sys.argv[1]
tokenizer = AutoTokenizer.from_pretrained(smollm2_backbone_path())
torch.manual_seed(0)
config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=512)
AutoModel.from_config(config).save_pretrained(folder)
tokenizer.save_pretrained(folder)
print(folder)
