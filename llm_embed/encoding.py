"""``encode``: texts in, embeddings out, the sentence-transformers way.

Texts are tokenized once, sorted by token length so that each batch carries little padding (or,
when packing, packed across the whole call into rows of one length and batched by a token budget),
run through the model batch by batch, and put back in the caller's order. The prompt prefix,
EOS and truncation to ``max_seq_length`` are applied here, so that every caller (search, training
evaluation, mteb) embeds a text the same way.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .packing import pack_batch, plan_packed_batches, resolve_packing

logger = logging.getLogger(__name__)


def check_texts(sentences) -> tuple[list[str], bool]:
    """Validate ``encode``'s input; returns (texts, whether a single string was given)."""
    if isinstance(sentences, str):
        return [sentences], True
    if sentences is None or not isinstance(sentences, Sequence):
        raise TypeError(
            f"encode() takes a string or a list of strings, got {type(sentences).__name__}; "
            "wrap a single text as model.encode('text') or model.encode(['text'])."
        )
    texts = list(sentences)
    if not texts:
        raise ValueError("encode() got an empty list of texts; pass at least one string.")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"encode(): item {index} is {type(text).__name__}, not str: {text!r:.80}")
    return texts, False


def resolve_prompt(prompts: dict[str, str], default_prompt_name: str | None, prompt_name, prompt) -> str:
    """The prefix to put before every text."""
    if prompt is not None and prompt_name is not None:
        raise ValueError("encode(): pass either prompt_name or prompt, not both.")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise TypeError(f"encode(): prompt must be a string, got {type(prompt).__name__}")
        return prompt
    name = prompt_name if prompt_name is not None else default_prompt_name
    if name is None:
        return ""
    if name not in prompts:
        raise ValueError(f"encode(): unknown prompt_name {name!r}; this model's prompts are {sorted(prompts)}")
    return prompts[name]


def tokenize_texts(tokenizer, texts: list[str], max_seq_length: int, append_eos: bool) -> list[list[int]]:
    """Token ids per text, truncated to ``max_seq_length`` (EOS included), with one warning if any was cut."""
    eos_id = tokenizer.eos_token_id
    if append_eos and eos_id is None:
        raise ValueError(
            "append_eos=True but the tokenizer has no eos_token; set tokenizer.eos_token or "
            "build the model with append_eos=False."
        )
    ids = tokenizer(texts, add_special_tokens=True, truncation=False, return_attention_mask=False)["input_ids"]
    budget = max_seq_length - 1 if append_eos else max_seq_length
    truncated = 0
    for i, row in enumerate(ids):
        if append_eos and row and row[-1] == eos_id and len(row) <= max_seq_length:
            continue  # the tokenizer already ended it with EOS and it fits: as is (no copies)
        if append_eos and row and row[-1] == eos_id:
            row = row[:-1]  # the tokenizer added EOS itself: place ours after truncation instead
        if len(row) > budget:
            truncated += 1
            row = row[:budget]
        ids[i] = row + [eos_id] if append_eos else row
        if not ids[i]:
            raise ValueError(
                f"encode(): text {i} {texts[i]!r:.80} produced no tokens; embed non-empty text or use append_eos=True."
            )
    if truncated:
        warnings.warn(
            f"{truncated} of {len(texts)} texts were longer than max_seq_length={max_seq_length} tokens and were truncated.",
            UserWarning,
            stacklevel=3,
        )
    return ids


def configure_eos(tokenizer) -> bool:
    """Make a fast tokenizer append EOS itself (``tokenizer(text)`` then ends with EOS), keeping the
    special tokens it already puts in front (BOS). Saved with the tokenizer, so that
    ``AutoTokenizer.from_pretrained(model folder)`` gives ids the model was trained on even outside
    ``encode``. Returns False (nothing changed) when it already does so; raises for a tokenizer
    whose post-processing cannot be rewritten this way."""
    eos_id, eos = tokenizer.eos_token_id, tokenizer.eos_token
    if eos_id is None:
        raise ValueError("append_eos=True but the tokenizer has no eos_token; set tokenizer.eos_token")
    with_specials = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    if with_specials and with_specials[-1] == eos_id:
        return False
    backend = getattr(tokenizer, "backend_tokenizer", None)
    cut = len(with_specials) - len(plain)
    if backend is None or cut < 0 or with_specials[cut:] != plain:
        raise ValueError(
            f"cannot make {type(tokenizer).__name__} append EOS (not a fast tokenizer with prefix-only special "
            "tokens); encode() and the training collator append it anyway"
        )
    from tokenizers.processors import TemplateProcessing

    prefix = tokenizer.convert_ids_to_tokens(with_specials[:cut])
    specials = dict(zip(prefix, with_specials[:cut]), **{eos: eos_id})
    backend.post_processor = TemplateProcessing(
        single=" ".join([*prefix, "$A", eos]),
        pair=" ".join([*prefix, "$A", eos, "$B:1", f"{eos}:1"]),
        special_tokens=list(specials.items()),
    )
    return True


def pad_arrays(rows: list[list[int]], pad_id: int, padding_side: str) -> np.ndarray:
    """Token id lists padded into one ``(2, B, T)`` int64 array: ids, then the attention mask.
    Built with two numpy fills (no per-row tensor work), as one block so that it moves to a
    device in a single copy."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    width = int(lengths.max())
    positions = np.arange(width)
    if padding_side == "right":
        mask = positions < lengths[:, None]
    else:
        mask = positions >= (width - lengths)[:, None]
    out = np.empty((2, len(rows), width), dtype=np.int64)
    out[0] = pad_id
    # boolean assignment fills row-major, i.e. in the order of the concatenated rows (both sides)
    out[0][mask] = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    out[1] = mask
    return out


def pad_batch(rows: list[list[int]], pad_id: int, padding_side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id lists to a (B, T) id tensor and attention mask."""
    input_ids, attention_mask = torch.from_numpy(pad_arrays(rows, pad_id, padding_side)).unbind(0)
    return input_ids, attention_mask


def host_to_device(block: np.ndarray, device: torch.device) -> torch.Tensor:
    """One host array on ``device`` in one copy. On CUDA the copy is asynchronous from page-locked
    memory (PyTorch's caching host allocator reuses the pinned blocks, so no ``cudaHostAlloc`` per
    batch once warm), so the next batch is prepared while the GPU works; a pageable copy would
    make the host wait for the GPU's queue."""
    tensor = torch.from_numpy(block)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


class EncodeMixin:
    """Adds ``encode`` to :class:`LLMEmbeddingModel` (needs ``tokenizer``, ``config``, ``device``, ``forward``)."""

    def encode(
        self,
        sentences: str | Sequence[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        normalize: bool | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        show_progress_bar: bool | None = None,
        packing: bool | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Embed texts.

        Args:
            sentences: one string (returns one vector) or a list of strings (returns a matrix).
            prompt_name: a key of ``config.prompts`` (``"query"``, ``"document"``), or
            prompt: a literal prefix; at most one of the two. Default: ``config.default_prompt_name``.
            batch_size: texts per forward pass (texts are sorted by length first). When packing, the
                whole call is packed into rows as long as its longest text (``L``) and each forward
                pass takes ``batch_size`` rows: a budget of ``batch_size x L`` tokens, the size of the
                largest padded batch (see :func:`~llm_embed.packing.plan_packed_batches`).
            normalize: L2-normalise; defaults to ``config.normalize``.
            convert_to_numpy / convert_to_tensor: numpy float32 array (default) or a torch tensor on the
                model's device, in the model's dtype (``convert_to_tensor`` wins, as in sentence-transformers).
            show_progress_bar: defaults to showing it when logging is at INFO or more verbose.
            packing: run the texts packed end to end, without padding (``llm_embed.packing``).
                ``None`` (default): only with ``flex_attention`` or ``flash_attention_*`` backbones;
                ``True``: always (with SDPA / eager through a dense block-diagonal mask, slower);
                ``False``: never. Results equal the padded ones up to floating-point rounding.
        """
        texts, single = check_texts(sentences)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"encode(): batch_size must be a positive integer, got {batch_size!r}")
        config = self.config
        prefix = resolve_prompt(config.prompts, config.default_prompt_name, prompt_name, prompt)
        tokenizer = self.tokenizer
        ids = tokenize_texts(tokenizer, [prefix + t for t in texts], config.max_seq_length, config.append_eos)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_id is None:
            raise ValueError("the tokenizer has neither a pad_token nor an eos_token; set tokenizer.pad_token.")
        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() <= logging.INFO
        lengths = [len(row) for row in ids]
        device = self.device
        packing_mode = resolve_packing(self, packing, max(lengths))
        if packing_mode is not None:
            plans = plan_packed_batches(lengths, batch_size, packing_mode)
        else:
            order = sorted(range(len(ids)), key=lambda i: -lengths[i])
            plans = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        is_causal = getattr(self.backbone.config, "is_causal", True) is not False
        chunks, produced = [], []  # embeddings per batch; the text indices they belong to, in that order
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                for plan in tqdm(plans, desc="Batches", disable=not show_progress_bar):
                    if packing_mode is not None:
                        packed = pack_batch([ids[i] for i in plan.texts], pad_id, mode=packing_mode,
                                            is_causal=is_causal, row_texts=plan.row_texts,
                                            row_length=plan.row_length, device=device, dtype=self.dtype)
                        output = self(packed=packed, normalize=normalize)
                        produced.extend(plan.texts)
                    else:
                        block = host_to_device(pad_arrays([ids[i] for i in plan], pad_id, config.padding_side), device)
                        input_ids, attention_mask = block.unbind(0)
                        output = self(input_ids=input_ids, attention_mask=attention_mask, normalize=normalize)
                        produced.extend(plan)
                    chunks.append(output.embeddings)
        finally:
            self.train(was_training)
        batch_embeddings = torch.cat(chunks)
        inverse = torch.empty(len(produced), dtype=torch.long)
        inverse[torch.tensor(produced)] = torch.arange(len(produced))
        embeddings = batch_embeddings[inverse.to(batch_embeddings.device)]
        if single:
            embeddings = embeddings[0]
        if convert_to_tensor:
            return embeddings
        if convert_to_numpy:
            return embeddings.float().cpu().numpy()
        return embeddings
