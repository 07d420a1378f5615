"""Language models: causal (next-token, labels shifted) and masked (predict the ``labels`` positions)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

from .. import losses
from ..sharding import shape_of
from ..signals import Signals, logit_divergence
from .base import TASKS, TaskAdapter, base_model_of, unwrap_model

__all__ = ["LanguageTask"]

_CAUSAL = frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
_MASKED = frozenset(MODEL_FOR_MASKED_LM_MAPPING_NAMES.values())


#: Config attributes (and their no-op values) of models that change the logits after the LM head.
_LOGIT_POSTPROCESSING = (("final_logit_softcapping", None), ("logit_scale", 1.0), ("logits_scaling", 1.0),
                         ("output_multiplier_scale", 1.0))


@TASKS.register
class LanguageTask(TaskAdapter):
    """Token-level distillation for causal and masked language models.

    Items are tokens. For a causal LM, position ``t`` predicts token ``t + 1``: logits are ``logits[:, :-1]`` and
    labels ``labels[:, 1:]``, exactly as the models' own loss shifts them. A position counts when its (shifted)
    label is not ``-100``; without labels, when the predicted token is not padding (``attention_mask``). For a
    masked LM nothing is shifted and the counted positions are those with a label (the masked tokens).
    """

    name = "language"
    allows_padded_teacher: ClassVar[bool] = True

    def __init__(self, causal: bool = True) -> None:
        self.causal = causal
        self._fused_head_checked = False

    @classmethod
    def detect(cls, model: nn.Module) -> LanguageTask | None:
        return cls.from_architecture(type(base_model_of(model)).__name__)

    @classmethod
    def from_architecture(cls, architecture: str) -> LanguageTask | None:
        if architecture in _CAUSAL or architecture.endswith(("ForCausalLM", "LMHeadModel")):
            return cls(causal=True)
        if architecture in _MASKED or architecture.endswith("ForMaskedLM"):
            return cls(causal=False)
        return None

    teacher_must_match = True

    def kind(self) -> str:
        return "causal language model" if self.causal else "masked language model"

    def auto_class(self) -> Any:
        return AutoModelForCausalLM if self.causal else AutoModelForMaskedLM

    cached_signal = "logits"

    def cache_settings(self, teacher: nn.Module) -> dict[str, Any]:
        return {"task": self.name, "causal": self.causal}

    def logit_width(self, model: nn.Module) -> int | None:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is not None and getattr(head, "weight", None) is not None:
            return int(shape_of(head.weight)[0])  # whole, also when ZeRO-3 partitioned it
        config = getattr(model, "config", None)
        return getattr(config.get_text_config(), "vocab_size", None) if config is not None else None

    def _labels(self, batch: dict[str, Any]) -> torch.Tensor | None:
        labels = batch.get("labels")
        if labels is None:
            return None
        return labels[:, 1:] if self.causal else labels

    def item_mask(self, batch: dict[str, Any]) -> torch.Tensor:
        labels = self._labels(batch)
        if labels is not None:
            return labels != -100
        if not self.causal:
            raise ValueError(
                "A masked language model needs `labels` marking the masked positions (e.g. from "
                "DataCollatorForLanguageModeling(tokenizer, mlm=True)); the batch has none."
            )
        input_ids = batch["input_ids"]
        attention_mask = batch.get("attention_mask")
        if attention_mask is None:
            return torch.ones_like(input_ids[:, 1:], dtype=torch.bool)
        return attention_mask[:, 1:].to(torch.bool)

    def run(self, model: nn.Module, batch: dict[str, Any], requires: frozenset[str]) -> Signals:
        kwargs: dict[str, Any] = self.output_kwargs(requires)
        if self.causal:
            kwargs["use_cache"] = False
        if "head_hidden" in requires:
            return self._run_for_fused_loss(model, batch, kwargs)
        outputs = model(**self.model_inputs(batch), **kwargs)
        logits = outputs.logits[:, :-1] if self.causal else outputs.logits
        return Signals(
            logits=logits,
            labels=self._labels(batch),
            mask=self.item_mask(batch),
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )

    def check_fused_head(self, model: nn.Module) -> nn.Linear:
        """The student's LM head, if a fused loss (`chunked_losses.fused_linear_divergence_ce`) can stand in for it:
        a causal LM whose head is a plain ``nn.Linear`` and whose config applies nothing to the logits after it
        (soft-capping, scaling). Raises a ValueError saying why not otherwise."""
        name = type(unwrap_model(model)).__name__
        if not self.causal:
            raise ValueError(f"`fused: true` is for causal language models; the student ({name}) is a masked LM, whose "
                             "head is more than one linear layer. Remove `fused`.")
        head = unwrap_model(model).get_output_embeddings() if hasattr(unwrap_model(model), "get_output_embeddings") \
            else None
        if type(head) is not nn.Linear:
            raise ValueError(f"`fused: true` computes the student's logits from its LM head's weight, which needs the "
                             f"head to be a plain torch.nn.Linear; {name}'s is {type(head).__name__} (an adapter on "
                             "the head, or a custom head). Remove `fused`.")
        config = getattr(unwrap_model(model), "config", None)
        text_config = config.get_text_config() if config is not None else None
        for key, neutral in _LOGIT_POSTPROCESSING:
            value = getattr(text_config, key, neutral)
            if value is not None and value != neutral:
                raise ValueError(f"`fused: true` computes the logits as hidden states @ head weight, but {name} "
                                 f"post-processes its logits (config.{key} = {value!r}). Remove `fused`.")
        return head

    def _run_for_fused_loss(self, model: nn.Module, batch: dict[str, Any], kwargs: dict[str, Any]) -> Signals:
        """Run the student without its full logits: a forward pre-hook on the LM head keeps the hidden states the
        head receives (whatever the architecture does before it: final norm, ...) and lets the head compute the
        last position only. That last position is compared, on the first batch, with the hidden states times the
        head's weight, so that a model which does more after its head fails loudly instead of training wrong."""
        head = self.check_fused_head(model)
        captured: dict[str, torch.Tensor] = {}

        def last_position_only(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            captured["hidden"] = args[0]
            return (args[0][:, -1:], *args[1:])

        handle = head.register_forward_pre_hook(last_position_only)
        try:
            outputs = model(**self.model_inputs(batch), **kwargs)
        finally:
            handle.remove()
        hidden = captured.get("hidden")
        length = batch["input_ids"].shape[1]
        if hidden is None or hidden.dim() != 3 or hidden.shape[1] != length:
            raise ValueError(f"`fused: true`: {type(unwrap_model(model)).__name__} did not pass its [batch, {length}, "
                             "hidden] states through its LM head module (get_output_embeddings()) in one call. "
                             "Remove `fused`.")
        if not self._fused_head_checked:
            expected = nn.functional.linear(hidden[:, -1:], head.weight, head.bias)
            if outputs.logits.shape != expected.shape or not torch.allclose(
                    outputs.logits.detach().float(), expected.detach().float(), rtol=1e-4, atol=1e-5):
                raise ValueError(f"`fused: true`: {type(unwrap_model(model)).__name__}'s logits are not its final "
                                 "hidden states times its LM head (the model changes them after the head). Remove "
                                 "`fused`.")
            self._fused_head_checked = True
        return Signals(
            labels=self._labels(batch),
            mask=self.item_mask(batch),
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
            head_hidden=hidden[:, :-1],
            head_weight=head.weight,
            head_bias=head.bias,
        )

    def eval_sums(self, student: Signals, teacher: Signals | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        mask = student.mask
        items = mask.sum()
        sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if student.labels is not None:
            counted = ((student.labels != -100) & mask).sum()
            sums["ce"] = (losses.ce(student.logits, student.labels, mask=mask, reduction="sum"), counted)
            if teacher is not None and teacher.logits is not None:  # a top-k cache lacks most labels' logits
                sums["teacher_ce"] = (losses.ce(teacher.logits, student.labels, mask=mask, reduction="sum"), counted)
        if teacher is not None:
            sums["kl_to_teacher"] = (logit_divergence(student, teacher, "kl", mask=mask), items)
            agree = (student.logits.argmax(-1) == teacher.top1()) & mask
            sums["top1_agreement"] = (agree.sum(), items)
        return sums

    def finalize_eval(self, means: dict[str, float]) -> dict[str, float]:
        out = dict(means)
        for key, name in (("ce", "perplexity"), ("teacher_ce", "teacher_perplexity")):
            if key in out:
                out[name] = math.exp(min(out.pop(key), 700.0))
        return out
