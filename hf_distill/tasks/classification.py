"""Sequence (and any single-label) classifiers: one item per example."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

from ..signals import Signals, logit_divergence
from .base import TASKS, TaskAdapter, base_model_of, token_mask_of
from .tokens import OwnTeacherTokens

__all__ = ["ClassificationTask"]

_SEQ_CLS = frozenset(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.values())


@TASKS.register
class ClassificationTask(OwnTeacherTokens, TaskAdapter):
    """Logit distillation for `AutoModelForSequenceClassification` models (``logits: [B, num_labels]``).

    Items are examples; every example counts. Labels (``[B]``) are optional and only needed by ``ce``.
    """

    name = "classification"

    @classmethod
    def detect(cls, model: nn.Module) -> ClassificationTask | None:
        return cls.from_architecture(type(base_model_of(model)).__name__)

    @classmethod
    def from_architecture(cls, architecture: str) -> ClassificationTask | None:
        if architecture in _SEQ_CLS or architecture.endswith("ForSequenceClassification"):
            return cls()
        return None

    teacher_must_match = True

    def kind(self) -> str:
        return "sequence classifier"

    def auto_class(self) -> Any:
        return AutoModelForSequenceClassification

    cached_signal = "logits"

    def logit_width(self, model: nn.Module) -> int | None:
        config = getattr(model, "config", None)
        return getattr(config, "num_labels", None)

    #: One logit vector per text: a teacher of another tokenizer (e.g. RoBERTa teaching a BERT student) reads its
    #: own tokens, from the ``teacher_input_ids`` / ``teacher_attention_mask`` columns (`tokens.add_teacher_tokens`).
    token_free_signals = frozenset({"logits"})

    def item_mask(self, batch: dict[str, Any]) -> torch.Tensor:
        reference = batch["input_ids"] if "input_ids" in batch else next(iter(batch.values()))
        return torch.ones(reference.shape[0], dtype=torch.bool, device=reference.device)

    def run(self, model: nn.Module, batch: dict[str, Any], requires: frozenset[str]) -> Signals:
        kwargs: dict[str, Any] = self.output_kwargs(requires)
        outputs = model(**self.model_inputs(batch), **kwargs)
        return Signals(
            logits=outputs.logits,
            labels=batch.get("labels"),
            mask=self.item_mask(batch),
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
            token_mask=token_mask_of(batch),
        )

    def eval_sums(self, student: Signals, teacher: Signals | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        items = student.mask.sum()
        sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        prediction = student.logits.argmax(-1)
        if student.labels is not None:
            sums["accuracy"] = ((prediction == student.labels).sum(), items)
            if teacher is not None:
                sums["teacher_accuracy"] = ((teacher.top1() == student.labels).sum(), items)
        if teacher is not None:
            sums["kl_to_teacher"] = (logit_divergence(student, teacher, "kl"), items)
            sums["top1_agreement"] = ((prediction == teacher.top1()).sum(), items)
        return sums
