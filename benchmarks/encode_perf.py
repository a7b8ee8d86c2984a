"""Inference cost of the embedding wrapper, each target measured as a ratio within one run (issues 6, 13).

    # CPU, real SmolLM2-135M (bundled), a subset of texts:
    PYTHONPATH=. python benchmarks/encode_perf.py --backbone smollm2 --num-texts 48 --json out.json
    # GPU, Mistral-7B-shaped random weights in bf16, built on the GPU:
    PYTHONPATH=. python benchmarks/encode_perf.py --backbone mistral7b-shape --device cuda --dtype bfloat16 \\
        --data-dir .gpu/data --json $OUT/encode_perf_gpu.json
    # smoke test (CPU, < 1 min):
    PYTHONPATH=. python benchmarks/encode_perf.py --backbone tiny --json /tmp/tiny.json

Workloads: STS-B test sentences (short) and SciFact documents (title + abstract, long), the first
``--num-texts`` sentences and ``--num-docs`` documents (CUDA defaults 2048 and 256). Targets:

1. ``encode`` (its default path: packed through flex attention on CUDA, padded elsewhere) vs the raw
   backbone forward over the same length-sorted padded batches (token ids already on the device), for
   every registered pooling head (causal): throughput ratio >= 0.98 on both workloads; also last_token
   with the tokenizers library's parallelism off (``TOKENIZERS_PARALLELISM=false``, as after a fork).
2. ``encode`` (causal, last_token, default path) vs sentence-transformers on the same backbone module
   (``Transformer`` + ``Pooling('lasttoken')``, same tokenizer, texts, batch size), after checking
   both give the same embeddings: >= 1.0 on CPU, >= 1.3 on GPU. The padded path (``packing=False``)
   is timed beside it, after checking that the default equals it. On GPU the fraction of the bf16
   matmul peak reached by the default path (real tokens only) is target 5: >= 0.60 on both workloads.
3. Peak inference memory of multi_layer vs last_token pooling on the longest batch (<= 1.02), and of
   the naive ``output_hidden_states=True`` multi-layer reduction. GPU: ``torch.cuda.max_memory_allocated``
   over the allocation before the forward. CPU: the peak bytes of tensor storages alive at once
   during the forward, counted op by op by a ``TorchDispatchMode`` (the process's resident set
   proved unusable: after a warm-up a forward can run entirely in already-resident memory).
4. ``encode`` throughput with bidirectional vs causal attention (mean pooling): >= 0.98.

Every timing is the median of ``--repeats`` interleaved repeats after a warm-up; on CUDA each is
bracketed by ``torch.cuda.synchronize``. Throughputs count real (non-padding) tokens; on CUDA the
fraction of a bf16 matmul peak measured in the same run is reported. Progress lines carry elapsed
seconds; the JSON is rewritten after each target, so a timeout keeps what was measured.
"""

from __future__ import annotations

import argparse
import copy
import csv
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import llm_embed  # noqa: F401  (registers the Auto classes)
from llm_embed import LLMEmbeddingConfig, LLMEmbeddingModel
from llm_embed.encoding import pad_batch, tokenize_texts
from llm_embed.packing import resolve_packing
from llm_embed.pooling import LAYER_REDUCTIONS, POOLING_HEADS

START = time.perf_counter()
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TARGETS = {
    "1": ("encode / raw backbone forward (throughput)", 0.98),
    "2": ("encode / sentence-transformers, last_token (throughput)", None),  # 1.0 CPU, 1.3 GPU
    "3": ("multi_layer / last_token peak memory", 1.02),
    "4": ("bidirectional / causal encode (throughput)", 0.98),
}
MATMUL_PEAK_FRACTION = 0.60
"""Target 5 (GPU): the default encode path's share of the measured bf16 matmul peak, real tokens only."""
SHAPES = {
    "mistral7b-shape": {"model_type": "mistral", "hidden_size": 4096, "num_hidden_layers": 32,
                        "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
                        "vocab_size": 32000, "max_position_embeddings": 32768, "sliding_window": None,
                        "tie_word_embeddings": False},
    "tiny": {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 49152, "max_position_embeddings": 1024},
}


def log(message: str) -> None:
    print(f"[{time.perf_counter() - START:7.1f}s] {message}", flush=True)


# ----------------------------------------------------------------------------- data and models


def load_texts(data_dir: Path, num_texts: int, num_docs: int) -> dict[str, list[str]]:
    sts, corpus = data_dir / "stsb" / "sts-test.csv", data_dir / "scifact" / "corpus.jsonl"
    for path in (sts, corpus):
        if not path.is_file():
            raise SystemExit(f"missing {path}: pass --data-dir pointing at a folder with stsb/ and scifact/")
    sentences = []
    with open(sts, encoding="utf-8") as handle:
        for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) < 7:
                continue
            for text in (row[5], row[6]):
                if text.strip() and len(sentences) < num_texts:
                    sentences.append(text)
            if len(sentences) >= num_texts:
                break
    documents = []
    with open(corpus, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            documents.append(f"{row.get('title', '')} {row.get('text', '')}".strip())
            if len(documents) >= num_docs:
                break
    return {"stsb": sentences, "scifact": documents}


def trained_tokenizer(data_dir: Path, vocab_size: int):
    """A byte-level BPE trained on the benchmark's own corpora (for shapes without a shipped tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    def corpus():
        with open(data_dir / "scifact" / "corpus.jsonl", encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                yield f"{row.get('title', '')} {row.get('text', '')}"
        with open(data_dir / "stsb" / "sts-test.csv", encoding="utf-8") as handle:
            for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
                yield " ".join(row[5:7])

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")


def build_backbone(args):
    """(backbone, tokenizer). Random shapes are built directly on the device, in the benchmark dtype."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    dtype = getattr(torch, args.dtype)
    if args.backbone == "smollm2":
        from llm_embed.bundled import smollm2_backbone_path

        path = smollm2_backbone_path()
        backbone = AutoModel.from_pretrained(path, dtype=dtype, attn_implementation=args.attn).to(args.device)
        return backbone, AutoTokenizer.from_pretrained(path)
    shape = dict(SHAPES[args.backbone])
    config = AutoConfig.for_model(shape.pop("model_type"), **shape)
    with torch.device(args.device):
        backbone = AutoModel.from_config(config, dtype=dtype, attn_implementation=args.attn)
    if args.tokenizer == "smollm2" or (args.tokenizer is None and args.backbone == "tiny"):
        from llm_embed.bundled import smollm2_backbone_path

        tokenizer = AutoTokenizer.from_pretrained(smollm2_backbone_path())
    elif args.tokenizer in (None, "train"):
        tokenizer = trained_tokenizer(args.data_dir, config.vocab_size)
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    if len(tokenizer) > config.vocab_size:
        raise SystemExit(f"tokenizer has {len(tokenizer)} ids, more than the backbone's vocab {config.vocab_size}")
    return backbone.eval(), tokenizer


def wrap(backbone, backbone_config: dict, tokenizer, attention: str, pooling: str, args) -> LLMEmbeddingModel:
    """An embedding model around an existing backbone module (shared, not copied): as ``from_backbone``."""
    config = LLMEmbeddingConfig(backbone_config=dict(backbone_config), attention=attention, pooling=pooling,
                                max_seq_length=args.max_seq_length)
    config._attn_implementation = backbone.config._attn_implementation
    model = LLMEmbeddingModel(config, backbone=backbone)
    for name, module in model.named_children():
        if name != "backbone":
            module.to(device=args.device, dtype=getattr(torch, args.dtype))
    model.tokenizer = tokenizer
    return model.eval()


def sentence_transformers_peer(model: LLMEmbeddingModel, tiny_config: dict):
    """sentence-transformers' Transformer + Pooling('lasttoken') running ``model``'s backbone module and
    tokenizer. The Transformer module is created from a tiny saved model of the same type, then its
    model is swapped for the shared backbone (nothing is downloaded or copied)."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoConfig, AutoModel

    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.modules import (
            Pooling,
            Transformer,
        )
    except ImportError:  # 3.x - 5.x (the GPU image)
        from sentence_transformers.models import Pooling, Transformer

    backbone = model.backbone
    shape = dict(tiny_config, model_type=backbone.config.model_type)
    with tempfile.TemporaryDirectory() as folder:
        AutoModel.from_config(AutoConfig.for_model(shape.pop("model_type"), **shape)).save_pretrained(folder)
        tokenizer = copy.deepcopy(model.tokenizer)
        tokenizer.chat_template = None  # else sentence-transformers renders every text as a chat message
        tokenizer.save_pretrained(folder)
        transformer = Transformer(folder, max_seq_length=model.config.max_seq_length)
    # the wrapped model is `model` in sentence-transformers >= 6, `auto_model` before
    setattr(transformer, "model" if "model" in transformer._modules else "auto_model", backbone)
    assert transformer.auto_model is backbone
    pooling = Pooling(backbone.config.hidden_size, pooling_mode="lasttoken")
    return SentenceTransformer(modules=[transformer, pooling], device=str(model.device))


# ----------------------------------------------------------------------------- measuring


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(variants: dict, device: str, repeats: int) -> dict[str, float]:
    """Median seconds per variant: one warm-up each, then ``repeats`` rounds running every variant once."""
    for fn in variants.values():
        fn()
    times = {name: [] for name in variants}
    for r in range(repeats):
        names = list(variants) if r % 2 == 0 else list(reversed(variants))  # alternate the order
        for name in names:
            times[name].append(timed(variants[name], device))
    return {name: statistics.median(values) for name, values in times.items()}


def padded_batches(model, texts, batch_size, device):
    """The batches ``encode`` runs (same tokenization, order, padding), already on the device."""
    tokenizer = model.tokenizer
    ids = tokenize_texts(tokenizer, texts, model.config.max_seq_length, model.config.append_eos)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    batches = []
    for start in range(0, len(order), batch_size):
        rows = [ids[i] for i in order[start : start + batch_size]]
        input_ids, mask = pad_batch(rows, tokenizer.pad_token_id, model.config.padding_side)
        batches.append((input_ids.to(device), mask.to(device)))
    lengths = [len(row) for row in ids]
    return batches, lengths


def raw_forward(backbone, batches):
    def run():
        with torch.inference_mode():
            for input_ids, mask in batches:
                backbone(input_ids=input_ids, attention_mask=mask, use_cache=False)

    return run


def encoder(model, texts, batch_size, **kwargs):
    return lambda: model.encode(texts, batch_size=batch_size, **kwargs)


def without_tokenizer_parallelism(run):
    """``run`` with the tokenizers library's own thread pool off, as in a forked worker (it reads the
    variable on every call)."""
    def wrapped():
        previous = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        try:
            return run()
        finally:
            if previous is None:
                del os.environ["TOKENIZERS_PARALLELISM"]
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = previous

    return wrapped


def matmul_peak_tflops(device: str, dtype: torch.dtype) -> float:
    """A big matmul loop: the achievable dense matmul rate in this dtype (TFLOP/s)."""
    n, iterations = (8192, 50) if device.startswith("cuda") else (1024, 5)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    seconds = timed(lambda: [a @ b for _ in range(iterations)], device)
    return 2 * n**3 * iterations / seconds / 1e12


def flops_per_token(backbone, lengths: list[int]) -> float:
    """2 x non-embedding parameters + attention (4 x layers x hidden x length, token-weighted)."""
    embeddings = backbone.get_input_embeddings().weight.numel()
    parameters = sum(p.numel() for p in backbone.parameters()) - embeddings
    config = backbone.config
    mean_context = sum(n * n for n in lengths) / sum(lengths)
    return 2 * parameters + 4 * config.num_hidden_layers * config.hidden_size * mean_context


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of the tensor storages created during a call and alive at the same time: the CPU
    analogue of ``torch.cuda.max_memory_allocated`` over the call. Every op's outputs pass through
    ``__torch_dispatch__``; a new storage adds its size, and a finalizer on the storage subtracts it
    when torch frees it. Independent of the allocator's caching and of other processes."""

    def __init__(self):
        super().__init__()
        self.current = self.peak = 0
        self.live: dict[int, int] = {}

    def _release(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu":
                continue
            storage = tensor.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or key in self.live:
                continue
            self.live[key] = size
            self.current += size
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._release, key)
        return out


def peak_bytes(fn, device: str) -> int:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    counter = LiveTensorBytes()
    with counter:
        fn()
    return counter.peak


# ----------------------------------------------------------------------------- targets


def verdict(ratio: float, threshold: float, higher_is_better: bool = True) -> str:
    return "pass" if (ratio >= threshold if higher_is_better else ratio <= threshold) else "MISS"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", choices=["smollm2", "mistral7b-shape", "tiny"], default="smollm2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--attn", default="sdpa", help="attn_implementation of the backbone (default sdpa)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 on CUDA, 16 on CPU")
    parser.add_argument("--num-texts", type=int, default=None,
                        help="STS-B sentences; default 2048 CUDA (about 19k tokens: 256 sentences are 4 batches "
                             "and 0.15 s on an H200, too short to time), 48 CPU, 32 tiny")
    parser.add_argument("--num-docs", type=int, default=None,
                        help="SciFact documents; default 256 CUDA, else --num-texts")
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--targets", default="1,2,3,4")
    parser.add_argument("--tokenizer", default=None,
                        help="smollm2, train (BPE trained on the data with the backbone's vocab; the default for "
                             "mistral7b-shape) or a tokenizer path")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    args.batch_size = args.batch_size or (64 if cuda else 16)
    args.num_docs = args.num_docs or (256 if cuda else args.num_texts or (32 if args.backbone == "tiny" else 48))
    args.num_texts = args.num_texts or (2048 if cuda else 32 if args.backbone == "tiny" else 48)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown or not targets:
        raise SystemExit(f"--targets: unknown {unknown}; choose from {sorted(TARGETS)}")
    for name in ("batch_size", "num_texts", "num_docs", "repeats", "max_seq_length"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be positive")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    dtype = getattr(torch, args.dtype)

    import transformers

    st_version = None
    if "2" in targets:  # the peer is only needed for target 2; say so rather than fail on the import
        try:
            import sentence_transformers
        except ImportError as error:
            raise SystemExit(
                "target 2 compares against sentence-transformers, which is not installed: "
                "pip install 'llm-embed[sentence-transformers]', or measure the other targets with --targets 1,3,4"
            ) from error
        st_version = sentence_transformers.__version__

    result = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "meta": {
            "backbone": args.backbone, "device": args.device, "dtype": args.dtype, "attn_implementation": args.attn,
            "batch_size": args.batch_size, "num_texts": args.num_texts, "num_docs": args.num_docs,
            "max_seq_length": args.max_seq_length,
            "repeats": args.repeats, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "sentence_transformers": st_version,
            "machine": torch.cuda.get_device_name() if cuda else f"{platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads",
        },
        "targets": {},
    }

    def save():
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2))

    log(f"start: {result['meta']}")
    texts = load_texts(args.data_dir, args.num_texts, args.num_docs)
    if cuda:
        result["meta"]["matmul_peak_tflops"] = round(matmul_peak_tflops(args.device, dtype), 1)
        log(f"matmul peak {result['meta']['matmul_peak_tflops']} TFLOP/s ({args.dtype})")
    backbone, tokenizer = build_backbone(args)
    backbone_config = backbone.config.to_dict()
    log(f"backbone built: {sum(p.numel() for p in backbone.parameters()) / 1e6:.1f}M parameters")
    causal = wrap(backbone, backbone_config, tokenizer, "causal", "last_token", args)
    tokenizer = causal.tokenizer  # the configured copy (EOS appended, padding side): shared by every model
    batches = {name: padded_batches(causal, items, args.batch_size, args.device) for name, items in texts.items()}
    for name, (_, lengths) in batches.items():
        log(f"{name}: {len(lengths)} texts, {sum(lengths)} tokens, mean {sum(lengths) / len(lengths):.1f}, "
            f"max {max(lengths)}")
    result["meta"]["workloads"] = {
        name: {"texts": len(lengths), "tokens": sum(lengths), "max_tokens": max(lengths)}
        for name, (_, lengths) in batches.items()
    }
    peak = result["meta"].get("matmul_peak_tflops")

    def rate(name: str, seconds: float) -> dict:
        lengths = batches[name][1]
        out = {"seconds": round(seconds, 4), "tokens_per_s": round(sum(lengths) / seconds, 1)}
        if peak:
            achieved = sum(lengths) / seconds * flops_per_token(backbone, lengths) / 1e12
            out["matmul_peak_fraction"] = round(achieved / peak, 4)
        return out

    if "1" in targets:
        section = result["targets"]["1"] = {"description": TARGETS["1"][0], "threshold": 0.98, "workloads": {}}
        models = {head: causal if head == "last_token"
                  else wrap(backbone, backbone_config, tokenizer, "causal", head, args)
                  for head in POOLING_HEADS}
        for name, items in texts.items():
            variants = {"raw_backbone": raw_forward(backbone, batches[name][0])}
            variants.update({head: encoder(model, items, args.batch_size) for head, model in models.items()})
            variants["last_token, TOKENIZERS_PARALLELISM=false"] = without_tokenizer_parallelism(
                encoder(models["last_token"], items, args.batch_size))
            medians = interleaved(variants, args.device, args.repeats)
            rows = {"raw_backbone": rate(name, medians["raw_backbone"])}
            for variant in variants:
                if variant == "raw_backbone":
                    continue
                ratio = medians["raw_backbone"] / medians[variant]
                rows[variant] = dict(rate(name, medians[variant]), ratio=round(ratio, 4), verdict=verdict(ratio, 0.98))
            section["workloads"][name] = rows
            log(f"target 1 {name}: " + ", ".join(f"{v} {r['ratio']:.3f}" for v, r in rows.items() if "ratio" in r))
            save()
        ratios = [row["ratio"] for rows in section["workloads"].values()
                  for h, row in rows.items() if h != "raw_backbone"]
        section.update(min_ratio=min(ratios), verdict=verdict(min(ratios), 0.98))
        del models
        save()

    if "2" in targets:
        threshold = 1.3 if cuda else 1.0
        section = result["targets"]["2"] = {"description": TARGETS["2"][0], "threshold": threshold, "workloads": {}}
        peer = sentence_transformers_peer(causal, SHAPES["tiny"])
        check = texts["stsb"][:8] + texts["scifact"][:4]
        ours = causal.encode(check, batch_size=args.batch_size, normalize=True, convert_to_tensor=True).float()
        theirs = peer.encode(check, batch_size=args.batch_size, normalize_embeddings=True,
                             convert_to_tensor=True).float()
        difference = float((ours - theirs.to(ours.device)).abs().max())
        tolerance = 1e-4 if dtype == torch.float32 else 3e-2
        section["sanity_max_abs_difference"] = difference
        log(f"target 2 sanity: max |ours - sentence-transformers| = {difference:.2e} (tolerance {tolerance})")
        padded = causal.encode(check, batch_size=args.batch_size, normalize=True, packing=False)
        section["default_path"] = "packed" if resolve_packing(causal, None, args.max_seq_length) else "padded"
        section["default_vs_padded_max_abs_difference"] = float(abs(ours.cpu().numpy() - padded).max())
        log(f"target 2: default path {section['default_path']}, max |default - padded| = "
            f"{section['default_vs_padded_max_abs_difference']:.2e}")
        section["sanity_ok"] = difference <= tolerance and section["default_vs_padded_max_abs_difference"] <= tolerance
        if not section["sanity_ok"]:
            log("target 2: an output disagrees beyond the tolerance: ratios marked invalid")
        best = []
        for name, items in texts.items():
            variants = {
                "sentence_transformers": lambda items=items: peer.encode(items, batch_size=args.batch_size,
                                                                         normalize_embeddings=True),
                "llm_embed": encoder(causal, items, args.batch_size, normalize=True),
                "llm_embed_padded": encoder(causal, items, args.batch_size, normalize=True, packing=False),
            }
            medians = interleaved(variants, args.device, args.repeats)
            rows = {"sentence_transformers": rate(name, medians["sentence_transformers"])}
            for variant in variants:
                if variant != "sentence_transformers":
                    ratio = medians["sentence_transformers"] / medians[variant]
                    rows[variant] = dict(rate(name, medians[variant]), ratio=round(ratio, 4),
                                         verdict=verdict(ratio, threshold))
            best.append(rows["llm_embed"]["ratio"])  # the default is what users get
            section["workloads"][name] = rows
            log(f"target 2 {name}: " + ", ".join(f"{v} {r['ratio']:.3f}" for v, r in rows.items() if "ratio" in r))
            save()
        section.update(min_ratio=min(best),
                       verdict=verdict(min(best), threshold) if section["sanity_ok"] else "invalid")
        fractions = [rows["llm_embed"].get("matmul_peak_fraction") for rows in section["workloads"].values()]
        if all(f is not None for f in fractions):
            result["targets"]["5"] = {
                "description": "default encode path, fraction of the bf16 matmul peak (real tokens)",
                "threshold": MATMUL_PEAK_FRACTION, "min_fraction": min(fractions),
                "verdict": verdict(min(fractions), MATMUL_PEAK_FRACTION),
                "workloads": {name: rows["llm_embed"]["matmul_peak_fraction"]
                              for name, rows in section["workloads"].items()},
            }
        del peer
        save()

    if "3" in targets:
        section = result["targets"]["3"] = {"description": TARGETS["3"][0], "threshold": 1.02}
        multi = wrap(backbone, backbone_config, tokenizer, "causal", "multi_layer", args)
        input_ids, mask = batches["scifact"][0][0]  # the longest batch
        reduce = LAYER_REDUCTIONS[multi.config.layer_reduction]

        def forward(model):
            def run():
                with torch.inference_mode():
                    model(input_ids=input_ids, attention_mask=mask)

            return run

        def naive():
            with torch.inference_mode():
                states = backbone(input_ids=input_ids, attention_mask=mask, use_cache=False,
                                  output_hidden_states=True).hidden_states
                torch.stack([reduce(s, mask) for s in states[1:]], dim=1)

        for run in (forward(causal), forward(multi), naive):  # warm-up
            run()
        peaks = {name: peak_bytes(run, args.device)
                 for name, run in (("last_token", forward(causal)), ("multi_layer", forward(multi)),
                                   ("naive_output_hidden_states", naive))}
        hidden = backbone.config.hidden_size * torch.finfo(dtype).bits // 8
        layer_states = input_ids.numel() * hidden  # one (B, T, H) state
        section.update(
            batch=list(input_ids.shape),
            measure=("torch.cuda.max_memory_allocated" if cuda
                     else "peak bytes of live tensor storages (TorchDispatchMode)"),
            peak_bytes=peaks,
            analytical_bytes={"one_layer_states": layer_states,
                              "all_hidden_states": layer_states * (backbone.config.num_hidden_layers + 1)},
            ratio=round(peaks["multi_layer"] / peaks["last_token"], 4),
            naive_ratio=round(peaks["naive_output_hidden_states"] / peaks["last_token"], 4),
        )
        section["verdict"] = verdict(section["ratio"], 1.02, higher_is_better=False)
        log("target 3: peaks MiB " + ", ".join(f"{k} {v / 2**20:.1f}" for k, v in peaks.items())
            + f"; ratio {section['ratio']}, naive {section['naive_ratio']}")
        del multi
        save()

    if "4" in targets:
        section = result["targets"]["4"] = {"description": TARGETS["4"][0], "threshold": 0.98, "workloads": {}}
        causal_mean = wrap(backbone, backbone_config, tokenizer, "causal", "mean", args)
        other = copy.deepcopy(backbone)
        bidirectional = wrap(other, backbone_config, tokenizer, "bidirectional", "mean", args)
        ratios = []
        for name, items in texts.items():
            medians = interleaved({"causal": encoder(causal_mean, items, args.batch_size),
                                   "bidirectional": encoder(bidirectional, items, args.batch_size)},
                                  args.device, args.repeats)
            ratio = medians["causal"] / medians["bidirectional"]
            ratios.append(ratio)
            section["workloads"][name] = {
                "causal": rate(name, medians["causal"]),
                "bidirectional": dict(rate(name, medians["bidirectional"]), ratio=round(ratio, 4),
                                      verdict=verdict(ratio, 0.98)),
            }
            log(f"target 4 {name}: bidirectional / causal {ratio:.3f}")
            save()
        section.update(min_ratio=round(min(ratios), 4), verdict=verdict(min(ratios), 0.98))
        del bidirectional, other
        save()

    print_table(result)
    result["meta"]["total_seconds"] = round(time.perf_counter() - START, 1)
    save()
    return result


def print_table(result: dict) -> None:
    print("\n| target | workload | variant | tokens/s | ratio | verdict |\n|---|---|---|---|---|---|", flush=True)
    for number, section in result["targets"].items():
        if number == "5":
            print(f"| 5 | {', '.join(f'{k} {v:.1%}' for k, v in section['workloads'].items())} | "
                  f"default encode, share of matmul peak | - | {section['min_fraction']:.3f} | {section['verdict']} |")
            continue
        if number == "3":
            print(f"| 3 | longest batch {section['batch']} | multi_layer / last_token peak | - | {section['ratio']} | "
                  f"{section['verdict']} (naive output_hidden_states: {section['naive_ratio']}) |")
            continue
        for workload, rows in section["workloads"].items():
            for variant, row in rows.items():
                if "ratio" in row:
                    fraction = f" ({row['matmul_peak_fraction']:.1%} of peak)" if "matmul_peak_fraction" in row else ""
                    print(f"| {number} | {workload} | {variant} | {row['tokens_per_s']:.0f}{fraction} | "
                          f"{row['ratio']:.3f} | {row['verdict']} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
