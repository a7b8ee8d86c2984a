"""The bundled SmolLM2's tokenizer: built from the GGUF's own metadata, the same under every supported
transformers (the floor run checks 5.2), and rebuilt in a cache folder converted before it was.

transformers 5.2 converted it into a CodeLlama tokenizer (EOS ``<|im_start|>``, five tokens past the
vocabulary) that, saved and reloaded, read every space as ``<|endoftext|>``: a fresh machine whose
first conversion ran under 5.2 computed every real-backbone vector on wrong token ids."""

import json
import os

import pytest
from transformers import AutoTokenizer, LlamaConfig

from llm_embed.bundled import (
    TOKENIZER_RECORD,
    gguf_tokenizer_metadata,
    smollm2_backbone_path,
    smollm2_gguf_file,
    smollm2_tokenizer,
)
from llm_embed.modeling_llm_embed import check_gguf_tokenizer

TEXTS = ["The cat sat on the mat.", "In 2024, 3 people paid $1,000.", "naïve café 東京\n  two  spaces",
         "Привет мир", "<|im_end|> is a special token"]


@pytest.fixture(scope="module")
def built():
    return smollm2_tokenizer()


def test_the_tokenizer_follows_the_gguf(built):
    fields = gguf_tokenizer_metadata(smollm2_gguf_file())
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(built) == len(tokens) == 49152  # nothing past the embedding matrix
    assert built.eos_token_id == fields["tokenizer.ggml.eos_token_id"] == 2  # <|im_end|>, not <|im_start|>
    assert built.bos_token_id == 1 and built.pad_token_id == 2 and built.unk_token_id == 0
    assert built.convert_ids_to_tokens(built(TEXTS[0])["input_ids"]) == ["The", "Ġcat", "Ġsat", "Ġon", "Ġthe",
                                                                         "Ġmat", "."]  # no BOS, no EOS
    assert built.convert_ids_to_tokens(built("year 2024")["input_ids"]) == ["year", "Ġ", "2", "0", "2", "4"]
    assert built("<|im_end|>")["input_ids"] == [2]  # control tokens stay whole
    for text in TEXTS:
        ids = built(text)["input_ids"]
        assert 0 not in ids, text  # no unknown token: byte-level covers every character
        assert built.decode(ids) == text


def test_the_cached_tokenizer_loads_as_built(smollm2_path, built):
    """What the cache holds loads back to the same token ids (a tokenizer_class that makes transformers
    rebuild its own pre-tokenizer would not)."""
    cached = AutoTokenizer.from_pretrained(smollm2_path)
    assert (smollm2_path / TOKENIZER_RECORD).is_file()
    for text in TEXTS:
        assert cached(text)["input_ids"] == built(text)["input_ids"], text
    assert (cached.eos_token, cached.pad_token, len(cached)) == ("<|im_end|>", "<|im_end|>", 49152)


def old_cache(root):
    """A cache folder converted before the tokenizer record, with the tokenizer transformers 5.2 wrote."""
    folder = root / "SmolLM2-135M-Instruct"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights stay")  # a converted folder, as far as the check looks
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CodeLlamaTokenizer",
                                                              "eos_token": "<|im_start|>"}))
    (folder / "tokenizer.json").write_text("{}")
    # read on load over tokenizer.json: left in place, the rebuilt tokenizer had this EOS and 49153 tokens
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|im_start|>",
                                                                "pad_token": "<|im_start|>"}))
    (folder / "added_tokens.json").write_text(json.dumps({"<fim_prefix>": 49152}))
    return folder


def test_a_cache_converted_before_the_record_gets_its_tokenizer_rebuilt(tmp_path, built):
    folder = old_cache(tmp_path)
    assert smollm2_backbone_path(tmp_path) == folder
    assert (folder / "model.safetensors").read_bytes() == b"weights stay"
    assert json.loads((folder / TOKENIZER_RECORD).read_text()) == {"format": 1}
    assert not [path for path in folder.iterdir() if path.name.startswith(".")]  # no staging folder left
    rebuilt = AutoTokenizer.from_pretrained(folder)
    assert type(rebuilt).__name__ == "TokenizersBackend" and rebuilt.eos_token == "<|im_end|>"
    assert (rebuilt.pad_token, len(rebuilt)) == ("<|im_end|>", 49152)
    assert not (folder / "special_tokens_map.json").exists() and not (folder / "added_tokens.json").exists()
    assert [rebuilt(text)["input_ids"] for text in TEXTS] == [built(text)["input_ids"] for text in TEXTS]
    stamp = (folder / "tokenizer.json").stat().st_mtime_ns
    smollm2_backbone_path(tmp_path)  # current now: left as it is
    assert (folder / "tokenizer.json").stat().st_mtime_ns == stamp


def test_a_read_only_cache_without_the_record_is_refused_by_name(tmp_path, monkeypatch):
    folder = old_cache(tmp_path)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: str(path) != str(folder) and real_access(path, mode))
    with pytest.raises(PermissionError, match=r"no record of its tokenizer format.*LLM_EMBED_CACHE"):
        smollm2_backbone_path(tmp_path)
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "CodeLlamaTokenizer"


def test_a_tokenizer_converted_wrongly_from_a_gguf_is_refused(built):
    """What transformers 5.2's GGUF conversion gives for SmolLM2: EOS <|im_start|> and five FIM tokens
    past the vocabulary, beside a model config that says EOS 2 and 49152 rows."""
    config = LlamaConfig(eos_token_id=2, vocab_size=49152)
    check_gguf_tokenizer(built, config, "smollm2.gguf")  # the right one passes
    wrong = smollm2_tokenizer()
    wrong.add_special_tokens({"eos_token": "<|im_start|>",
                              "additional_special_tokens": ["▁<PRE>", "▁<MID>", "▁<SUF>", "▁<EOT>", "<FILL_ME>"]})
    with pytest.raises(ValueError, match=r"converted the tokenizer of smollm2.gguf wrongly \(EOS '<\|im_start\|>' "
                                         r"\(id 1\) where the file's model has id 2; 49157 tokens for an embedding "
                                         r"matrix of 49152 rows\).*pass tokenizer="):
        check_gguf_tokenizer(wrong, config, "smollm2.gguf")
