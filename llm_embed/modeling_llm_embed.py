"""LLMEmbeddingModel: any decoder backbone + a pooling head, loadable through ``AutoModel``.

Data flow of ``forward``: ids + mask -> position ids from the mask (so left and right padding give
the same positions) -> backbone (causal, or bidirectional via ``bidirectional.make_bidirectional``)
-> for ``multi_layer``, per-layer vectors reduced during the pass (``layer_states``) -> pooling head
-> optional projection -> optional L2 normalisation -> ``LLMEmbeddingOutput.embeddings``.

This file, ``configuration_llm_embed.py`` and the modules they import relatively are copied next
to saved weights, so a checkpoint loads with ``trust_remote_code=True`` where llm_embed is absent.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import os
import sys
import weakref
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from .atomic_save import check_save_target, save_atomically
from .bidirectional import check_causal_support, make_bidirectional
from .configuration_llm_embed import (
    BUILD_OPTIONS,
    LLM_EMBEDDING_OPTIONS,
    RENAMED_OPTIONS,
    LLMEmbeddingConfig,
    check_for_misspelled_options,
    check_head_options,
    is_gguf_load_record,
    unknown_arguments,
)
from .contrastive import (
    InfoNCELoss,
    all_reduce_gradients,
    cached_contrastive_loss,
    distributed_world,
    find_ddp_wrapper,
    find_fully_sharded_root,
    text_keys,
)
from .encoding import EncodeMixin, training_pass
from .hub import (
    PUSH_ARGUMENTS,
    check_local_path,
    check_safe_serialization,
    expand_home,
    has_saved_file,
    push_model_to_hub,
    saved_config_file,
)
from .layer_states import LayerStateCollector, find_decoder_layers
from .model_card import has_user_model_card, write_model_card
from .packed_attention import SDPA_WITH_FLEX  # noqa: F401  (see below)
from .packing import PackedBatch
from .pooling import LAYER_REDUCTIONS, POOLING_HEADS, PoolingHead
from .sentence_transformers_files import (
    SENTENCE_TRANSFORMERS_MODULE,
    saved_sentence_transformers_settings,
    write_sentence_transformers_files,
)
from .tokenizer_setup import configure_tokenizer, load_saved_tokenizer, tokenizer_settings

logger = logging.getLogger(__name__)

# Every module that a shipped module imports is imported here too: for trust_remote_code, transformers 5.2
# copies only the direct relative imports of this file into its module cache (tests/test_architecture.py).

# from_pretrained arguments that also locate the tokenizer saved beside the weights.
_HUB_KWARGS = ("cache_dir", "revision", "token", "local_files_only", "subfolder", "force_download",
               "trust_remote_code")


@dataclass
class LLMEmbeddingOutput(ModelOutput):
    """Output of :class:`LLMEmbeddingModel`.

    Args:
        loss: training loss; set only when the model is called with what a loss needs (training).
        embeddings: (batch, embedding_dim) text embeddings, normalised when ``config.normalize``.
    """

    loss: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None


def saved_model_type(path, name_or_path) -> str | None:
    """The ``model_type`` of the ``config.json`` at ``path`` (of ``name_or_path``); a file that is not JSON
    is an error naming it."""
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle).get("model_type")
        except json.JSONDecodeError as error:
            raise ValueError(f"the config.json of {name_or_path} ({path}) is not valid JSON: {error}") from error


def check_has_config(name_or_path, hub_kwargs: dict, model_type: str) -> None:
    """Refuse a folder (or repo) without ``config.json`` at once: without it transformers would build
    the model from a default config (a randomly initialised Llama-7B) before failing. A config of
    another ``model_type`` (a plain decoder's folder) is refused too: transformers would read it as an
    llm_embed config and fail on its first unknown key (``num_attention_heads``). A Hub that cannot
    be reached is transformers' error (naming the connection), not "holds no config.json"."""
    from transformers.utils import CONFIG_NAME

    path = saved_config_file(name_or_path, hub_kwargs)
    if path is None:
        if has_saved_file(name_or_path, "adapter_config.json", hub_kwargs):  # llm-embed-train --lora's adapter/
            raise OSError(
                f"{name_or_path} holds LoRA adapters (adapter_config.json), not a whole model: put them on their "
                "base with llm_embed.lora.load_lora(LLMEmbeddingModel.from_backbone(decoder, ...), path), or "
                "evaluate the folder with llm-embed-evaluate, which rebuilds the base from its llm_embed_base.json; "
                "llm-embed-train also saved the merged model in the folder above.")
        raise OSError(
            f"{name_or_path} holds no {CONFIG_NAME}, so it is not a saved llm_embed model (save one with "
            "model.save_pretrained(folder)); to build a new embedding model on a decoder's weights use "
            "LLMEmbeddingModel.from_backbone(path)."
        )
    saved_type = saved_model_type(path, name_or_path)
    if saved_type is not None and saved_type != model_type:
        raise ValueError(
            f"{name_or_path} holds a plain {saved_type} model (its {CONFIG_NAME} has model_type {saved_type!r}, "
            f"not {model_type!r}), not a saved llm_embed model. To build an embedding model on its weights use "
            f"LLMEmbeddingModel.from_backbone({os.fspath(name_or_path)!r}, attention=..., pooling=...)."
        )


def check_not_an_embedding_model(name_or_path, hub_kwargs: dict) -> None:
    """Refuse a local folder of a saved llm_embed model given to ``from_backbone`` before it loads: it is
    no decoder to build on (refused later as "not a decoder LM", with a hint for encoders)."""
    path = os.path.join(os.fspath(name_or_path), hub_kwargs.get("subfolder") or "", "config.json")
    if "gguf_file" in hub_kwargs or not os.path.isfile(path):
        return
    if saved_model_type(path, name_or_path) == LLMEmbeddingConfig.model_type:
        raise ValueError(
            f"{name_or_path} holds a saved llm_embed model, not a decoder to build one on: load it with "
            f"AutoModel.from_pretrained({os.fspath(name_or_path)!r}) (or LLMEmbeddingModel.from_pretrained).")


class LLMEmbeddingPreTrainedModel(PreTrainedModel):
    config_class = LLMEmbeddingConfig
    # The attribute holding the decoder: ``model.base_model`` is the backbone, as for transformers' heads.
    base_model_prefix = "backbone"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = []  # the backbone's own are gathered by post_init
    # The loss is a mean over this batch's queries: the Trainer must scale it for gradient
    # accumulation itself, not pass `num_items_in_batch` (which **kwargs would otherwise suggest).
    accepts_loss_kwargs = False

    def _init_weights(self, module):
        """Called by transformers once per module outside the backbone, children before parents
        (the backbone is a model of its own, initialised by its own class). Linear and LayerNorm
        layers get transformers' init at ``config.initializer_range``; a pooling head initialises
        its own parameters (:meth:`~llm_embed.pooling.PoolingHead.init_weights`)."""
        if isinstance(module, PoolingHead):
            module.init_weights(self.config.initializer_range)
        elif isinstance(module, (nn.Linear, nn.LayerNorm)):
            super()._init_weights(module)


class LLMEmbeddingModel(EncodeMixin, LLMEmbeddingPreTrainedModel):
    """A decoder LLM turned into a text-embedding model (Tang & Yang 2024 design space).

    Build a new one from pretrained backbone weights with :meth:`from_backbone`, load a saved one
    with ``AutoModel.from_pretrained``, embed with :meth:`encode` or call it like any model.
    """

    def __init__(self, config: LLMEmbeddingConfig, backbone: PreTrainedModel | None = None, **unknown):
        if unknown:  # from_pretrained passes on the keyword arguments that are neither its own nor the config's
            raise TypeError(f"LLMEmbeddingModel got unknown arguments {unknown_arguments(unknown)}: neither "
                            "LLMEmbeddingConfig options nor from_pretrained's (a misspelling?)")
        super().__init__(config)
        if backbone is None:
            config.check_backbone_given()
        config.validate_design()  # again: options may have been assigned since the config was built
        if backbone is None:
            # A copy: the attention mode is applied to the built backbone's config, never to the
            # nested config that is saved (``attention`` stays the single source of truth).
            backbone = AutoModel.from_config(copy.deepcopy(config.backbone_config))
        elif backbone.config.model_type != config.backbone_config.model_type:
            raise ValueError(
                f"backbone is a {backbone.config.model_type} model but config.backbone_config is "
                f"{config.backbone_config.model_type}"
            )
        self.backbone = backbone
        if config.attention == "bidirectional":
            make_bidirectional(self.backbone, find_decoder_layers(self.backbone, config.backbone_num_layers))
        else:
            check_causal_support(self.backbone.config)  # a backbone passed in may differ from backbone_config
        self.pooler = POOLING_HEADS[config.pooling](config)
        self.projection = (
            nn.Linear(config.backbone_hidden_size, config.output_dim) if config.output_dim is not None else None
        )
        self._layer_collector = None
        # truncate_dim / similarity_fn_name of the folder's config_sentence_transformers.json (from_pretrained)
        self.saved_sentence_transformers_settings: dict = {}
        if self.pooler.needs_layer_states:
            layers = find_decoder_layers(self.backbone, config.backbone_num_layers)
            self._layer_collector = LayerStateCollector(
                layers, config.resolved_pooling_layers, LAYER_REDUCTIONS[config.layer_reduction]
            )
        self._tokenizer = None
        # what this model was built with: check_built_design refuses a config edited away from it
        self._built_design = {name: copy.deepcopy(getattr(config, name)) for name in BUILD_OPTIONS}
        self.post_init()

    def check_built_design(self) -> None:
        """Refuse a config whose build options (:data:`~llm_embed.configuration_llm_embed.BUILD_OPTIONS`:
        attention, head, head sizes, projection) were edited after the model was built. The model still
        computes with the values it was built with, so the edit would change nothing in memory, while
        ``save_pretrained`` would write a config that describes another model: reloaded, it would give
        other vectors or fail on its weights. Called by ``encode`` and ``save_pretrained``."""
        built = self.__dict__.get("_built_design")
        if built is None:
            return
        changed = {name: value for name, value in built.items() if getattr(self.config, name) != value}
        if changed:
            edits = ", ".join(f"config.{name} is {getattr(self.config, name)!r} but the model was built with "
                              f"{value!r}" for name, value in changed.items())
            raise ValueError(
                f"{edits}: these options are read when the model is built, so the model still computes with the "
                "built values, and a save would describe another model. Set them back, or build a new model with "
                "the new values (LLMEmbeddingModel.from_backbone(decoder, ...), or LLMEmbeddingConfig(...) and "
                "LLMEmbeddingModel(config) to train from scratch)."
            )

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        normalize: bool | None = None,
        query_input_ids: torch.LongTensor | None = None,
        query_attention_mask: torch.Tensor | None = None,
        document_input_ids: torch.LongTensor | None = None,
        document_attention_mask: torch.Tensor | None = None,
        return_loss: bool = True,
        return_dict: bool | None = None,
        **kwargs,
    ) -> LLMEmbeddingOutput | tuple:
        """Embed a tokenized batch (``input_ids``), or, given a contrastive batch (``query_*`` and
        ``document_*`` from :class:`~llm_embed.data.ContrastiveDataCollator`: B queries; B positives
        then K hard negatives per query), return the InfoNCE ``loss`` and the query embeddings.
        ``normalize`` overrides ``config.normalize`` for this call."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if normalize is not None and not isinstance(normalize, bool):
            raise TypeError(f"normalize must be None (use config.normalize), True or False; got {normalize!r}")
        if query_input_ids is not None:
            if document_input_ids is None:
                raise ValueError("a contrastive batch needs document_input_ids (positives, then hard negatives)")
            loss, embeddings = self._contrastive_loss(
                (query_input_ids, query_attention_mask), (document_input_ids, document_attention_mask)
            )
            output = LLMEmbeddingOutput(loss=loss if return_loss else None, embeddings=embeddings)
            return output if return_dict else output.to_tuple()
        embeddings = self.embed(input_ids, attention_mask, position_ids, inputs_embeds, **kwargs)
        if self.config.normalize if normalize is None else normalize:
            embeddings = F.normalize(embeddings, p=2, dim=-1)
        output = LLMEmbeddingOutput(embeddings=embeddings)
        return output if return_dict else output.to_tuple()

    def embed(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        packed: PackedBatch | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Unnormalised embeddings of a tokenized batch: backbone, pooling head, projection.
        ``packed`` (from :func:`~llm_embed.packing.pack_batch`, used by ``encode``) replaces the
        padded inputs: the backbone runs on packed rows and the heads see the padded layout. The whole
        pass runs in one train / eval mode whatever other threads do (:func:`~llm_embed.encoding.training_pass`)."""
        with training_pass(self):
            return self._embed(input_ids, attention_mask, position_ids, inputs_embeds, packed, **kwargs)

    def _embed(self, input_ids, attention_mask, position_ids, inputs_embeds, packed, **kwargs) -> torch.Tensor:
        unpack = None
        if packed is not None:
            if input_ids is not None or inputs_embeds is not None or attention_mask is not None:
                raise ValueError("pass either a packed batch or input_ids / inputs_embeds / attention_mask, not both")
            input_ids, position_ids, backbone_mask = packed.input_ids, packed.position_ids, packed.attention_mask
            attention_mask, unpack = packed.padded_mask, packed.unpack
        reference = input_ids if input_ids is not None else inputs_embeds
        if reference is None:
            raise ValueError("forward() needs input_ids or inputs_embeds")
        if attention_mask is None:
            attention_mask = torch.ones(reference.shape[:2], dtype=torch.long, device=reference.device)
        if position_ids is None:
            # Count real tokens only: identical positions whatever the padding side and amount.
            position_ids = (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)
        if packed is None:
            backbone_mask = attention_mask
        collector = self._layer_collector
        with collector.collect(attention_mask, unpack) if collector is not None else nullcontext() as call_state:
            backbone_output = self.backbone(
                input_ids=input_ids,
                attention_mask=backbone_mask,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                use_cache=False,
                return_dict=True,
                **kwargs,
            )
        token_states = backbone_output.last_hidden_state
        if unpack is not None:
            token_states = unpack(token_states)
        layer_states = collector.stack(call_state, token_states, attention_mask) if collector is not None else None
        embeddings = self.pooler(token_states, attention_mask, layer_states)
        if embeddings.shape != token_states.shape[:1] + token_states.shape[2:]:
            raise ValueError(  # a head registered from user code that returns another shape
                f"the pooling head {self.config.pooling!r} returned shape {tuple(embeddings.shape)} for "
                f"{token_states.shape[0]} texts; a head returns (batch, {self.config.backbone_hidden_size}) "
                f"(the backbone's hidden size, which output_dim projects from)")
        if self.projection is not None:
            embeddings = self.projection(embeddings)
        return embeddings

    def _contrastive_loss(self, query_inputs, document_inputs) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.config
        loss_fn = InfoNCELoss(config.loss_temperature, config.loss_symmetric, config.loss_gather_across_ranks,
                              config.loss_mask_duplicates)
        if config.loss_mask_duplicates:  # repeated texts are told by their tokens
            loss_fn = partial(loss_fn, query_keys=text_keys(*query_inputs), document_keys=text_keys(*document_inputs))
        mini_batch = config.loss_mini_batch_size
        if mini_batch is not None and torch.is_grad_enabled():
            sharded_root = self._fully_sharded_root()
            loss, queries = cached_contrastive_loss(
                lambda ids, mask: self.embed(ids, mask), loss_fn, query_inputs, document_inputs, mini_batch,
                after_backward=None if sharded_root is not None else self._take_over_ddp_gradient_sync(),
                devices={parameter.device for parameter in self.parameters()},  # all of a model split over GPUs
                # FSDP2 unshards the weights it keeps at the root (embeddings, head) in the root's forward
                # hooks: the second pass, run from the backward, must go through them again
                embed_with_graph=None if sharded_root is None else partial(self._embed_through, sharded_root),
            )
            return loss, F.normalize(queries, p=2, dim=-1)
        queries = self.embed(*query_inputs)
        documents = self.embed(*document_inputs)
        return loss_fn(queries, documents), F.normalize(queries.detach(), p=2, dim=-1)

    # ------------------------------------------------------------------ training support

    def _fully_sharded_root(self) -> nn.Module | None:
        """The FSDP2 root holding this model (itself, or a ``PeftModel`` around it), found once per
        model and kept as a weak reference; None when not sharded."""
        cached = self.__dict__.get("_fsdp_root")
        root = cached() if cached is not None else None
        if root is None:
            root = find_fully_sharded_root(self)
            if root is not None:
                self.__dict__["_fsdp_root"] = weakref.ref(root)
        return root

    @staticmethod
    def _embed_through(root: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unnormalised embeddings by calling ``root`` (this model or a wrapper that passes its
        arguments on), so that its hooks run as in a forward: FSDP2 unshards the root's weights and
        reduce-scatters their gradients there. FSDP2 reduce-scatters each module's gradient in its
        post-backward hook and adds it to the sharded gradient, so one backward per mini-batch sums
        as one backward over the batch would; no gradient synchronisation is taken over as for DDP."""
        output = root(input_ids=input_ids, attention_mask=attention_mask, normalize=False, return_dict=True)
        return output.embeddings

    def __getstate__(self) -> dict:
        """Pickling (``torch.save(model)``, spawn workers): the cached weak reference to a DDP
        wrapper belongs to this process's training run and cannot be pickled; it is found again."""
        state = dict(super().__getstate__())
        state.pop("_ddp_wrapper", None)
        state.pop("_fsdp_root", None)
        return state

    def _take_over_ddp_gradient_sync(self):
        """GradCache under DDP: its mini-batch backward passes would each fire DDP's reducer (which
        expects one backward per forward). So the reducer is kept out of this step (as under
        ``no_sync``) and the gradients are averaged over ranks once all mini-batches are done.
        Returns that final step (None outside distributed training)."""
        world, _ = distributed_world()
        if world == 1:
            return None
        cached = self.__dict__.get("_ddp_wrapper")  # a weak reference, not a submodule
        ddp = cached() if cached is not None else None
        if ddp is None or ddp.module is not self:
            ddp = find_ddp_wrapper(self)
            if ddp is None:
                raise ValueError(
                    "loss_mini_batch_size (GradCache) under distributed training needs the model wrapped in "
                    "DistributedDataParallel or sharded with FSDP2's fully_shard (as the Trainer and accelerate "
                    "do; with --fsdp pass fsdp_version 2 in --fsdp_config: FSDP1 expects one backward per forward). "
                    "DeepSpeed ZeRO cannot run it: ZeRO reduces each gradient once per backward, GradCache "
                    "back-propagates once per mini-batch."
                )
            self.__dict__["_ddp_wrapper"] = weakref.ref(ddp)
        synchronise = ddp.require_backward_grad_sync  # False inside no_sync (gradient accumulation)
        ddp.require_backward_grad_sync = False  # read by DDP after this forward: reducer not prepared

        def after_backward():
            if synchronise:
                all_reduce_gradients(p for p in self.parameters() if p.requires_grad)
            ddp.require_backward_grad_sync = synchronise

        return after_backward

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None, **kwargs):
        """Guard of ``activation_checkpointing_enable`` / ``gradient_checkpointing_enable`` (both
        non-reentrant by default). Reentrant checkpointing runs the checkpointed region under
        ``no_grad``; where checkpointing wraps a layer's ``__call__`` (transformers up to about 5.2x;
        5.24 wraps ``forward``) the per-layer hooks run inside it and multi-layer pooling's gradient
        into earlier layers would be cut silently, so reentrant checkpointing is refused for that head."""
        keywords = getattr(gradient_checkpointing_func, "keywords", None) or {}
        if enable and self._layer_collector is not None and keywords.get("use_reentrant"):
            raise ValueError(
                "multi_layer pooling needs non-reentrant activation checkpointing: use_reentrant=True runs layers "
                "under no_grad and would cut the gradient of the per-layer vectors; drop use_reentrant=True."
            )
        if gradient_checkpointing_func is not None:
            kwargs["gradient_checkpointing_func"] = gradient_checkpointing_func
        super()._set_gradient_checkpointing(enable=enable, **kwargs)

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.backbone.set_input_embeddings(value)

    def resize_token_embeddings(self, *args, **kwargs) -> nn.Embedding:
        """transformers' resize, which records the new vocabulary size in ``config.backbone_config``
        (the saved config); the built backbone has its own copy of that config (the attention mode is
        applied to the copy only), which gets the same size, so both stay in sync."""
        embeddings = super().resize_token_embeddings(*args, **kwargs)
        self.backbone.config.vocab_size = self.config.backbone_config.vocab_size
        return embeddings

    # ------------------------------------------------------------------ tokenizer

    @property
    def tokenizer(self):
        """The tokenizer ``encode`` uses: set by ``from_backbone``, loaded with the checkpoint by
        ``from_pretrained`` (from the same folder, at load time, so the model never depends on that
        folder staying unchanged), or assigned by the user.

        It always matches the current config: when ``padding_side``, ``max_seq_length`` or
        ``append_eos`` changed since it was configured (``model.config.max_seq_length = 256``,
        ``st.max_seq_length = 256``, ``from_pretrained(..., append_eos=False)``), it is configured
        again here, so that ``encode``, the training collator and the tokenizer ``save_pretrained``
        writes all follow the config (a tuple comparison per call; a copy only after a change)."""
        if self._tokenizer is None:
            raise ValueError(
                "this model has no tokenizer: build it with LLMEmbeddingModel.from_backbone, load it with "
                "from_pretrained from a folder that holds one, or assign model.tokenizer = AutoTokenizer..."
            )
        if self.__dict__.get("_tokenizer_settings") != tokenizer_settings(self.config):
            self.tokenizer = self._tokenizer  # configured again for the current config
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer) -> None:
        """Keeps a configured copy (the caller's object is not changed): pad token, padding side,
        maximum length, and a post-processor that appends EOS exactly when ``append_eos`` says so
        (:func:`~llm_embed.tokenizer_setup.configure_tokenizer`). The config values it was configured
        for are recorded, so that the getter notices when they change."""
        settings = tokenizer_settings(self.config)
        if tokenizer is not None:
            tokenizer = configure_tokenizer(tokenizer, self.config)
        self._tokenizer = tokenizer
        self._tokenizer_settings = settings

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """``PreTrainedModel.from_pretrained``, but a checkpoint whose weights do not match the
        model (missing, unexpected or mismatched keys, e.g. a head saved with other sizes) is an
        error instead of a warning followed by randomly initialised weights. A local path that does not
        exist, a folder of a plain decoder and a Hub that cannot be reached are refused at once, each
        with its own message (see :func:`~llm_embed.hub.check_local_path` and :func:`check_has_config`)."""
        pretrained_model_name_or_path = expand_home(pretrained_model_name_or_path)
        check_local_path(pretrained_model_name_or_path)
        want_info = kwargs.pop("output_loading_info", False)
        hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
        config = kwargs.get("config")
        if config is None:
            check_has_config(pretrained_model_name_or_path, hub_kwargs, model_type=cls.config_class.model_type)
        # A design option given here (a keyword argument, or a config, as AutoModel passes the keyword
        # arguments) overrides the checkpoint's: the model then computes other vectors than the ones it was
        # saved and trained with. Said (and named in a refusal), not refused: transformers' rule.
        saved = None
        if ((isinstance(config, PreTrainedConfig) or any(name in kwargs for name in BUILD_OPTIONS))
                and has_saved_file(pretrained_model_name_or_path, "config.json", hub_kwargs)):
            saved = cls.config_class.from_pretrained(  # trust_remote_code is the Auto classes' (a warning here)
                pretrained_model_name_or_path, **{k: v for k, v in hub_kwargs.items() if k != "trust_remote_code"})
        # Let transformers report size mismatches instead of raising its generic error, so that the
        # error below names the offending keys; they are refused all the same.
        kwargs.setdefault("ignore_mismatched_sizes", True)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        overrides = ", ".join(f"{name}={getattr(model.config, name)!r} (saved: {getattr(saved, name)!r})"
                              for name in (BUILD_OPTIONS if saved is not None else ())
                              if getattr(model.config, name) != getattr(saved, name))
        problems = loading_problems(info, ("missing_keys", "unexpected_keys", "mismatched_keys"))
        if problems:
            details = "; ".join(f"{key}: {value[:8]}{' ...' if len(value) > 8 else ''}"
                                for key, value in problems.items())
            cause = (f"from_pretrained was given {overrides}: leave these out to load the checkpoint's own design"
                     if overrides else "Its weights were saved for another design or are incomplete")
            raise ValueError(
                f"checkpoint {pretrained_model_name_or_path} does not match {cls.__name__} "
                f"(pooling={model.config.pooling!r}): {details}. {cause}; refusing to fill them with random values."
            )
        if overrides:
            logger.warning(
                "from_pretrained(%s, ...) was given %s: the model computes other vectors than the ones it was saved "
                "(and trained) with. Leave these out to load the checkpoint's own design.",
                pretrained_model_name_or_path, overrides)
        if has_saved_file(pretrained_model_name_or_path, "tokenizer_config.json", hub_kwargs):
            model.tokenizer = load_saved_tokenizer(pretrained_model_name_or_path, hub_kwargs,
                                                   backbone_config=model.config.backbone_config)
        # What st.save wrote beyond the config (truncate_dim, similarity_fn_name): written again by save_pretrained.
        settings = saved_sentence_transformers_settings(pretrained_model_name_or_path)
        model.saved_sentence_transformers_settings = settings
        truncate_dim = settings.get("truncate_dim")
        if truncate_dim is not None and truncate_dim < model.config.embedding_dim:
            logger.warning(
                "%s/config_sentence_transformers.json sets truncate_dim=%d (a SentenceTransformer saved with it): "
                "sentence-transformers returns %d-dimensional vectors from this folder, encode returns %d. For the "
                "same vectors, slice embeddings[..., :%d] (sliced vectors are no longer unit length).",
                pretrained_model_name_or_path, truncate_dim, truncate_dim, model.config.embedding_dim, truncate_dim)
        return (model, info) if want_info else model

    def save_pretrained(self, save_directory: str | os.PathLike, *args, model_card: dict | None = None, **kwargs):
        """Save config (with ``auto_map``), safetensors weights, code files, the tokenizer and a model
        card (README.md; an existing README not written by llm_embed is left alone). ``model_card``:
        keyword arguments of :func:`~llm_embed.model_card.render_model_card` (``repo_id``,
        ``license``, ``evaluation_results``, ``tags``).

        The save is atomic (:mod:`~llm_embed.atomic_save`): everything is written into a staging
        folder beside ``save_directory`` and swapped in, so the folder holds the old checkpoint or
        the new one, whole, even when writing fails halfway; files of an older checkpoint there
        (stale shards, a tokenizer this model does not have) are removed, other files are kept. A
        folder that is a mount point or holds the working directory is updated file by file instead
        (each file atomic, the set not; see that module). A symbolic link is followed (the link stays).

        Positional arguments are transformers' (``save_pretrained(folder, is_main_process, ...)``)."""
        # Name every argument, so that is_main_process, push_to_hub ... count however they were passed.
        signature = inspect.signature(super().save_pretrained)
        kwargs = dict(signature.bind(save_directory, *args, **kwargs).arguments)
        extra = {}  # what transformers' **kwargs took: only push_to_hub reads it there, anything else is ignored
        for name, parameter in signature.parameters.items():
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                extra = kwargs.pop(name, {})
        del kwargs[next(iter(signature.parameters))]  # save_directory
        check_safe_serialization(extra.pop("safe_serialization", kwargs.pop("safe_serialization", True)))
        if "save_function" in extra:  # a named parameter before transformers 5.x dropped it; see below
            kwargs["save_function"] = extra.pop("save_function")
        pushed = {key: extra.pop(key) for key in PUSH_ARGUMENTS if key in extra} if kwargs.get("push_to_hub") else {}
        if extra:  # a misspelled argument (varient=, max_shard_sise=) would save with the default without a word
            for_push = [key for key in PUSH_ARGUMENTS if key in extra]
            if for_push:
                raise TypeError(f"save_pretrained() got {', '.join(for_push)} without push_to_hub=True: "
                                f"{'they are' if len(for_push) > 1 else 'it is'} only read for the push")
            known = [*(name for name, parameter in signature.parameters.items()
                       if parameter.kind is not inspect.Parameter.VAR_KEYWORD), *PUSH_ARGUMENTS]
            raise TypeError(f"save_pretrained() got unknown arguments {unknown_arguments(sorted(extra), known)}")
        kwargs.update(pushed)
        if not kwargs.get("is_main_process", True):
            # Other ranks write nothing: the main rank's save is atomic, and a rank writing weights into
            # the same folder would race it (transformers 5.2 still writes the shards from every rank;
            # later versions do not). A save_function is the caller's collective (XLA's xm.save must be
            # called on every rank), so then transformers' own save runs.
            if "save_function" in kwargs:
                return super().save_pretrained(save_directory, **kwargs)
            return None
        # before anything is written: a config edited into one that does not describe these weights, or
        # whose options no longer agree (a default prompt that is gone), would save a folder that fails to load
        self.check_built_design()
        self.config.validate_design()
        push_to_hub = kwargs.pop("push_to_hub", False)
        hub_kwargs = {key: kwargs.pop(key) for key in PUSH_ARGUMENTS if key in kwargs}
        target = check_save_target(save_directory)
        write_card = not has_user_model_card(target)
        tokenizer = None if self._tokenizer is None else self.tokenizer  # configured for the current config

        def write(folder: str) -> None:
            super(LLMEmbeddingModel, self).save_pretrained(folder, **kwargs)
            if tokenizer is not None:
                tokenizer.save_pretrained(folder)
            write_sentence_transformers_files(self, folder)
            if write_card:
                write_model_card(self, folder, **(model_card or {}))

        # The code files this save writes (and an earlier save wrote): transformers copies the model's and
        # the config's module files and their relative imports (custom_object_save); write_sentence_
        # transformers_files adds one. Only these replace a file of the folder; a user's train.py stays.
        from transformers.dynamic_module_utils import get_relative_import_files

        module_files = [sys.modules[type(obj).__module__].__file__ for obj in (self, self.config)
                        if type(obj).__module__ != "__main__"]  # transformers does not copy __main__
        code_files = {os.path.basename(path) for module_file in module_files
                      for path in (module_file, *get_relative_import_files(module_file))}
        code_files.add(SENTENCE_TRANSFORMERS_MODULE + ".py")
        save_atomically(target, write, replaced_names=code_files)
        if push_to_hub:
            repo_id = hub_kwargs.pop("repo_id", os.path.basename(target))
            return self.push_to_hub(repo_id, max_shard_size=kwargs.get("max_shard_size", "5GB"), **hub_kwargs)
        return None

    # Everything save_pretrained writes (config with auto_map, weights, tokenizer, code files, the
    # embedding model's card, the sentence-transformers files) in one Hub commit; see llm_embed.hub.
    push_to_hub = push_model_to_hub

    @classmethod
    def from_backbone(
        cls,
        name_or_path: str | os.PathLike,
        attention: str = "bidirectional",
        pooling: str = "multi_layer",
        *,
        gguf_file: str | None = None,
        dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = None,
        device_map=None,
        tokenizer=None,
        backbone_kwargs: dict | None = None,
        **config_kwargs,
    ) -> LLMEmbeddingModel:
        """A new embedding model on pretrained decoder weights (a folder, a Hub id, or a GGUF file).

        The backbone keeps its pretrained weights; the pooling head (if trainable) is freshly
        initialised. The backbone's tokenizer is attached (and saved with the model).
        Hub arguments (``revision``, ``token``, ``cache_dir``, ``local_files_only``, ``subfolder``,
        ``trust_remote_code``) reach both the backbone and tokenizer loads; ``backbone_kwargs`` go to
        the backbone's ``from_pretrained`` only. The remaining ``config_kwargs`` are
        :class:`LLMEmbeddingConfig` values (``num_latents=...``, ``max_seq_length=...``).
        """
        hub_kwargs = {key: config_kwargs.pop(key) for key in _HUB_KWARGS if key in config_kwargs}
        if gguf_file is not None:
            hub_kwargs["gguf_file"] = gguf_file
        if "torch_dtype" in config_kwargs:  # transformers 4's name, which AutoModel.from_pretrained still takes
            if dtype is not None:
                raise TypeError("from_backbone got dtype and torch_dtype: pass dtype only (torch_dtype is its "
                                "old name)")
            dtype = config_kwargs.pop("torch_dtype")
        if "output_loading_info" in (backbone_kwargs or {}):
            raise TypeError("backbone_kwargs output_loading_info: from_backbone reads the backbone's loading info "
                            "itself and refuses missing or mismatched weights; leave it out")
        load_kwargs = {
            key: value
            for key, value in dict(dtype=dtype, attn_implementation=attn_implementation, device_map=device_map).items()
            if value is not None
        }
        # before the backbone loads; unlike the config's own check, this one sees an explicit layer_reduction
        check_head_options({"pooling": pooling, **config_kwargs})
        check_for_misspelled_options({key: value for key, value in config_kwargs.items()
                                      if key not in LLM_EMBEDDING_OPTIONS and key not in RENAMED_OPTIONS})
        name_or_path = expand_home(name_or_path)
        check_local_path(name_or_path)  # a moved or mistyped decoder folder: named, not looked up on the Hub
        check_not_an_embedding_model(name_or_path, hub_kwargs)
        if gguf_file is not None:
            backbone, info = load_gguf_backbone(name_or_path, **hub_kwargs, **load_kwargs, **(backbone_kwargs or {}),
                                                output_loading_info=True)
        else:
            backbone, info = AutoModel.from_pretrained(name_or_path, **hub_kwargs, **load_kwargs,
                                                       **(backbone_kwargs or {}), output_loading_info=True)
            drop_gguf_quantizer(backbone, name_or_path)  # a folder converted from a GGUF that kept the record
        check_backbone_loaded(info, name_or_path, ignore_mismatched=bool((backbone_kwargs or {}).get(
            "ignore_mismatched_sizes")))
        backbone_config = backbone.config.to_dict()
        config = LLMEmbeddingConfig(backbone_config=backbone_config, attention=attention, pooling=pooling,
                                    **config_kwargs)
        config._attn_implementation = backbone.config._attn_implementation
        model = cls(config, backbone=backbone)
        parameter = next(backbone.parameters())
        for name, module in model.named_children():
            if name != "backbone":
                module.to(device=parameter.device, dtype=parameter.dtype)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, **hub_kwargs)
            if gguf_file is not None:
                check_gguf_tokenizer(tokenizer, backbone.config, gguf_file)
        elif isinstance(tokenizer, (str, os.PathLike)):  # a folder or Hub id, as transformers' pipelines take it
            tokenizer = AutoTokenizer.from_pretrained(expand_home(tokenizer), **{
                key: value for key, value in hub_kwargs.items() if key not in ("gguf_file", "subfolder")})
        check_tokenizer_fits(tokenizer, backbone)
        model.tokenizer = tokenizer
        # both: transformers reads the config's, peft the model's (adapter_config.json's base_model_name_or_path)
        model.config.name_or_path = model.name_or_path = str(name_or_path)
        return model


def loading_problems(info: dict, keys: tuple[str, ...]) -> dict[str, list[str]]:
    """The weight names under ``keys`` of transformers' loading info that hold any (a mismatched key is a
    ``(name, saved shape, model shape)`` tuple), sorted."""
    problems = {key: sorted(str(item[0]) if isinstance(item, tuple) else str(item) for item in info.get(key) or [])
                for key in keys}
    return {key: names for key, names in problems.items() if names}


def check_backbone_loaded(info: dict, source, ignore_mismatched: bool = False) -> None:
    """Refuse a backbone whose checkpoint lacks weights it needs (``missing_keys``) or holds them in other
    shapes (``mismatched_keys``): transformers fills those with random values and only prints a load
    report, so every vector would come from a partly random decoder (a checkpoint saved under another
    prefix, ``base_model.model.``..., loads with every weight random). Unexpected keys (an LM head the
    bare decoder does not have) are normal. ``ignore_mismatched_sizes=True`` in ``backbone_kwargs`` asks
    for mismatched weights to be initialised: allowed, as in transformers."""
    problems = loading_problems(info, ("missing_keys",) if ignore_mismatched else ("missing_keys", "mismatched_keys"))
    if problems:
        details = "; ".join(f"{len(names)} {key.replace('_', ' ')} ({', '.join(names[:4])}"
                            f"{', ...' if len(names) > 4 else ''})" for key, names in problems.items())
        raise ValueError(
            f"the backbone {source} loaded with {details}: transformers would initialise them randomly. The "
            "checkpoint is incomplete, saved under other weight names (a wrapper's prefix such as base_model.model.), "
            "or of another architecture than its config.json; load it with AutoModel.from_pretrained to see "
            "transformers' load report, and fix or re-save the checkpoint.")


def check_tokenizer_fits(tokenizer, backbone: PreTrainedModel) -> None:
    """Refuse a tokenizer with more tokens than the backbone's embedding matrix has rows (tokens added
    to it, or another model's tokenizer): ``encode`` would fail on the first such id with a bare
    ``IndexError`` (a device-side assert on CUDA)."""
    embeddings = backbone.get_input_embeddings()
    rows = getattr(embeddings, "num_embeddings", None)  # the module's size, also when ZeRO-3 partitions the weight
    if rows is not None and len(tokenizer) > rows:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens and the backbone's embedding matrix {rows} rows: ids from "
            f"{rows} on have no embedding. Use the backbone's own tokenizer, or grow the matrix first "
            "(model.backbone.resize_token_embeddings(len(tokenizer)) on the built model, then assign "
            "model.tokenizer = tokenizer; the new rows start untrained).")


def load_gguf_backbone(name_or_path, gguf_file: str, **kwargs):
    """A decoder read from a GGUF file, as plain float weights that train and save. Newer transformers
    keep a GGUF's quantized weights packed where a matmul kernel is installed (``GgufConfig``): asked
    not to here. The quantizer it still attaches (and the ``quantization_config`` it records) would
    refuse ``save_pretrained`` and training though the weights are floats: dropped."""
    import transformers

    if hasattr(transformers, "GgufConfig") and "quantization_config" not in kwargs:
        kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True)
    loaded = AutoModel.from_pretrained(name_or_path, gguf_file=gguf_file, **kwargs)
    backbone = loaded[0] if kwargs.get("output_loading_info") else loaded
    drop_gguf_quantizer(backbone, gguf_file, read_from_gguf=True)
    return loaded


def check_gguf_tokenizer(tokenizer, backbone_config, gguf_file) -> None:
    """Refuse a tokenizer that transformers converted from a GGUF file wrongly. Its GGUF conversion
    depends on the version: transformers 5.2 turns a GPT-2-type vocabulary (SmolLM2's, Qwen2's) into a
    CodeLlama tokenizer with the BOS as EOS and five FIM tokens past the vocabulary, which once saved
    and reloaded reads every space as an unknown token. The model config converted from the same file
    is right, so its EOS id and vocabulary size tell; every vector would be wrong, so it is an error."""
    wrong = []
    eos = backbone_config.eos_token_id
    if eos is not None and tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in (
            eos if isinstance(eos, (list, tuple)) else [eos]):
        wrong.append(f"EOS {tokenizer.eos_token!r} (id {tokenizer.eos_token_id}) where the file's model has id "
                     f"{backbone_config.eos_token_id}")
    vocab_size = getattr(backbone_config, "vocab_size", None)
    if vocab_size is not None and len(tokenizer) > vocab_size:
        wrong.append(f"{len(tokenizer)} tokens for an embedding matrix of {vocab_size} rows")
    if wrong:
        import transformers

        raise ValueError(
            f"transformers {transformers.__version__} converted the tokenizer of {gguf_file} wrongly ("
            f"{'; '.join(wrong)}): every embedding would be computed on wrong token ids. Install a transformers "
            "that converts it right (5.24 does for SmolLM2), or pass tokenizer= (the bundled SmolLM2's: "
            "llm_embed.bundled.smollm2_tokenizer()).")


def drop_gguf_quantizer(backbone: PreTrainedModel, source, read_from_gguf: bool = False) -> None:
    """Unflag a backbone whose weights came from a GGUF file as floats (see :func:`load_gguf_backbone`);
    refuse one whose weights were kept packed. Any other backbone (no GGUF record) is left as it is."""
    record = is_gguf_load_record(getattr(backbone.config, "quantization_config", None))
    if not (record or read_from_gguf):
        return
    packed = getattr(getattr(backbone, "hf_quantizer", None), "packed_modules", None)
    if packed:
        raise ValueError(
            f"{source} was loaded with {len(packed)} modules' weights kept packed in GGUF blocks (e.g. "
            f"{next(iter(packed))}), which an embedding model can neither train nor save. Leave quantization_config "
            "out of backbone_kwargs (llm_embed asks for GgufConfig(dequantize=True)).")
    backbone.hf_quantizer = None
    backbone.is_quantized = False
    if record:
        del backbone.config.quantization_config


__all__ = ["LLMEmbeddingModel", "LLMEmbeddingOutput", "LLMEmbeddingPreTrainedModel", "load_gguf_backbone"]
