"""A learning rate of its own for the pooling head, through optimizer parameter groups.

The backbone arrives pretrained (and is often LoRA-adapted at a small rate such as 1e-4), while a
trainable pooling head and the optional projection start from their initialisation: the rate that
suits the one is too small for the other. :func:`set_head_learning_rate` moves every parameter
outside the backbone into parameter groups of their own, at ``head_learning_rate``, keeping each
group's other settings (weight decay, betas, ...). The ``Trainer``'s schedule (warm-up, decay)
then scales both rates alike, since a scheduler scales each group's initial rate.

Two ways to use it, both with transformers' ``Trainer``:

- :class:`EmbeddingTrainer` (``Trainer`` plus ``head_learning_rate=``) regroups the optimizer the
  ``Trainer`` builds from its arguments (``--optim``, weight decay, FSDP / DeepSpeed wrapping), via
  the documented ``create_optimizer`` hook. ``llm-embed-train`` and ``llm-embed-study`` use it.
- With the plain ``Trainer``, build the optimizer yourself and pass it in::

      optimizer = set_head_learning_rate(torch.optim.AdamW(model.parameters(), lr=1e-4), model, 1e-3)
      trainer = Trainer(model=model, args=args, optimizers=(optimizer, None), ...)

  (transformers refuses ``optimizers=`` under FSDP and DeepSpeed; use :class:`EmbeddingTrainer` there.)
"""

from __future__ import annotations

import inspect
import math
import weakref

import torch
from torch import nn
from transformers import Trainer

BACKBONE_ATTRIBUTE = "backbone"  # LLMEmbeddingModel.base_model_prefix


def is_head_parameter(name: str) -> bool:
    """A parameter outside the backbone: the pooling head or the projection, whatever wraps the model
    (PEFT's ``base_model.model.``, DDP's ``module.``, FSDP's ``_fsdp_wrapped_module.``)."""
    return BACKBONE_ATTRIBUTE not in name.split(".")


def check_head_learning_rate(value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not 0 < value < math.inf):
        raise ValueError(f"head_learning_rate must be a positive number or None (the backbone's rate), got {value!r}")


def set_head_learning_rate(optimizer: torch.optim.Optimizer, model: nn.Module,
                           head_learning_rate: float | None) -> torch.optim.Optimizer:
    """Give ``model``'s trainable parameters outside the backbone the rate ``head_learning_rate``:
    each parameter group that holds some is split in two, the head's part with ``lr`` (and
    ``initial_lr``, if a scheduler already set it) replaced. Call it before the scheduler is built
    and before the first step. ``None`` changes nothing. Returns ``optimizer``."""
    check_head_learning_rate(head_learning_rate)
    if head_learning_rate is None:
        return optimizer
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    flat = [name for name in names.values() if "_flat_param" in name]
    if flat:
        raise ValueError(
            "head_learning_rate needs the model's own parameter names, but FSDP flattened them "
            f"({flat[0]}); use FSDP2 (fsdp_version 2) or fsdp_use_orig_params true"
        )
    if any(optimizer.state.get(parameter) for group in optimizer.param_groups for parameter in group["params"]):
        raise ValueError("set_head_learning_rate must run before the first optimizer step (the optimizer has state)")
    head_groups = []
    for group in optimizer.param_groups:
        head = [parameter for parameter in group["params"] if is_head_parameter(names.get(id(parameter), ""))]
        if not head:
            continue
        moved = {id(parameter) for parameter in head}
        group["params"] = [parameter for parameter in group["params"] if id(parameter) not in moved]
        settings = {key: value for key, value in group.items() if key != "params"}
        settings["lr"] = head_learning_rate
        if "initial_lr" in settings:
            settings["initial_lr"] = head_learning_rate
        head_groups.append(dict(settings, params=head))
    if not head_groups:
        raise ValueError("head_learning_rate is set but the optimizer holds no trainable parameter outside the "
                         "backbone (a mean / last_token model without output_dim has none, or the head is frozen)")
    optimizer.param_groups[:] = [group for group in optimizer.param_groups if group["params"]]
    for group in head_groups:
        optimizer.add_param_group(group)
    return optimizer


class EmbeddingTrainer(Trainer):
    """``transformers.Trainer`` with ``head_learning_rate``: the optimizer it builds from its
    arguments gets the head's parameter groups (:func:`set_head_learning_rate`). And a checkpoint it
    loads back (``resume_from_checkpoint``, ``load_best_model_at_end``) gets every weight
    (:meth:`_issue_warnings_after_load`). And ``checkpoint_files`` (name -> JSON content, such as
    ``llm-embed-train``'s run record) are written into every checkpoint (:meth:`save_model`).
    Everything else is the plain ``Trainer``."""

    def __init__(self, *args, head_learning_rate: float | None = None,
                 checkpoint_files: dict[str, dict] | None = None, **kwargs):
        check_head_learning_rate(head_learning_rate)
        given = inspect.signature(Trainer.__init__).bind_partial(self, *args, **kwargs).arguments
        if head_learning_rate is not None and (given.get("optimizers") or (None, None))[1] is not None:
            # the scheduler holds the optimizer's groups as they were; the head's new groups would
            # make its first step fail (or go unscheduled)
            raise ValueError(
                "head_learning_rate with a scheduler of your own in optimizers=: the head's parameter groups are "
                "made after your scheduler was built on the old ones. Pass optimizers=(optimizer, None) so the "
                "Trainer builds the schedule, or call set_head_learning_rate(optimizer, model, rate) before building "
                "your scheduler and drop head_learning_rate"
            )
        self.head_learning_rate = head_learning_rate
        self.checkpoint_files = dict(checkpoint_files or {})
        self._saving_checkpoint = False
        self._regrouped_optimizer = None  # the optimizer that got the head's groups (weakly: not kept alive)
        super().__init__(*args, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        self._checkpoint_loading = (resume_from_checkpoint, model)
        try:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        finally:
            self._checkpoint_loading = None

    def _load_best_model(self):
        self._checkpoint_loading = (self.state.best_model_checkpoint, None)
        try:
            return super()._load_best_model()
        finally:
            self._checkpoint_loading = None

    def _save_checkpoint(self, model, trial):
        self._saving_checkpoint = True
        try:
            return super()._save_checkpoint(model, trial)
        finally:
            self._saving_checkpoint = False

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Inside a checkpoint save, ``checkpoint_files`` are written right after the model: ``_save_checkpoint``
        (transformers 5.2 to 5.24) saves the model first and deletes older checkpoints (``save_total_limit``)
        last, and a callback's ``on_save`` comes after that. Records written there were missing from the
        only checkpoint left when the run stopped in between, and a resume of it went unchecked."""
        super().save_model(output_dir, _internal_call=_internal_call)
        if self._saving_checkpoint and self.checkpoint_files and self.args.should_save:
            from .resume import write_run_files

            write_run_files(output_dir if output_dir is not None else self.args.output_dir, self.checkpoint_files)

    def _issue_warnings_after_load(self, load_result) -> None:
        """The ``Trainer`` reads a checkpoint's weights file into the model as raw keys, non-strict, and
        only warns of missing ones. ``save_pretrained`` writes some weights in another layout than the
        model holds (a mixture of experts' fused experts, saved one per expert), so those were silently
        left as they were: a resumed MoE run went on with the base model's experts and the restored
        optimizer state (transformers issue 48805). Read such a checkpoint with ``from_pretrained``,
        which converts the layout, and copy every tensor in (strict), instead of warning."""
        loading = getattr(self, "_checkpoint_loading", None)
        model = self.model if loading is None or loading[1] is None else loading[1]
        ignored = set(getattr(model, "_keys_to_ignore_on_save", None) or ())
        missing = [key for key in load_result.missing_keys if key not in ignored]
        if loading is None or loading[0] is None or not missing or not hasattr(type(model), "from_pretrained"):
            return super()._issue_warnings_after_load(load_result)
        folder = loading[0]
        parameter = next(model.parameters())
        reloaded = type(model).from_pretrained(folder, dtype=parameter.dtype)
        model.load_state_dict(reloaded.state_dict(), strict=True)
        del reloaded

    def create_optimizer(self, *args, **kwargs) -> torch.optim.Optimizer:
        # transformers >= 5.x passes an optional ``model``; 5.2's create_optimizer takes no argument
        optimizer = super().create_optimizer(*args, **kwargs)
        model = args[0] if args else kwargs.get("model")
        # The Trainer calls this again for the optimizer it already holds, which has the head's groups, and
        # builds a new one on each ``train()`` with ``model_init`` (every hyperparameter_search trial):
        # regroup each optimizer once, by identity, not only the first.
        # After ``train()`` it holds accelerate's wrapper of the one it built: compare what is wrapped.
        inner = optimizer
        while isinstance(getattr(inner, "optimizer", None), torch.optim.Optimizer):
            inner = inner.optimizer
        regrouped = self._regrouped_optimizer() if self._regrouped_optimizer is not None else None
        if self.head_learning_rate is not None and regrouped is not inner:
            set_head_learning_rate(inner, self.model if model is None else model, self.head_learning_rate)
            self._regrouped_optimizer = weakref.ref(inner)
        return optimizer


__all__ = ["EmbeddingTrainer", "check_head_learning_rate", "is_head_parameter", "set_head_learning_rate"]
