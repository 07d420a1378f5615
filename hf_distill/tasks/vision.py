"""Image classifiers (`AutoModelForImageClassification`: ViT, DeiT, ConvNeXt, ResNet, ...): one item per image."""

from __future__ import annotations

import inspect
from typing import Any

import torch
import transformers
from torch import nn
from transformers import AutoModelForImageClassification
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

from ..signals import Signals
from .base import TASKS, base_model_of
from .classification import ClassificationTask

__all__ = ["VisionTask"]


def _names(values: Any) -> set[str]:
    names: set[str] = set()
    for value in values:
        names.update((value,) if isinstance(value, str) else value)
    return names


_IMAGE_CLS = frozenset(_names(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.values()))


@TASKS.register
class VisionTask(ClassificationTask):
    """Logit (and feature) distillation for image classifiers: batches hold ``pixel_values`` ``[B, C, H, W]`` and
    optional ``labels`` ``[B]``; ``logits`` are ``[B, num_labels]``; every image is one counted item.

    Detected from the model class (or ``config.architectures``): any image-classification class of transformers
    (``...ForImageClassification``) and DeiT's ``DeiTForImageClassificationWithTeacher``. Hidden states (ViT-like
    models: ``[B, patches + special tokens, H]``; CNNs: ``[B, C, h, w]`` per stage) and attentions are requested only
    when an objective needs them.

    DeiT's distillation token: for a ``DeiTForImageClassificationWithTeacher`` student, ``Signals.logits`` is the
    class-token head (``cls_logits``, trained by ``ce`` and any logit objective) and ``Signals.distillation_logits``
    the distillation-token head (trained on the teacher by ``deit_distill``). Evaluation metrics use the model's own
    prediction, the average of both heads (``outputs.logits``).

    Evaluation metrics as for classification: ``accuracy`` (with labels), ``teacher_accuracy``, ``top1_agreement``
    and ``kl_to_teacher``.
    """

    name = "vision"
    cached_signal = None  # the teacher-signal cache builder reads token batches; vision teachers run live

    def __init__(self, architecture: str | None = None) -> None:
        self.architecture = architecture

    @classmethod
    def detect(cls, model: nn.Module) -> VisionTask | None:
        return cls.from_architecture(type(base_model_of(model)).__name__)

    @classmethod
    def from_architecture(cls, architecture: str) -> VisionTask | None:
        if architecture in _IMAGE_CLS or architecture.endswith(("ForImageClassification",
                                                                 "ForImageClassificationWithTeacher")):
            return cls(architecture)
        return None

    def auto_class(self) -> Any:
        return AutoModelForImageClassification

    def load_model(self, name_or_path: str, **kwargs: Any) -> nn.Module:
        """A model with a distillation head (``...WithTeacher``) is loaded with its own class: the auto class would
        build the plain classifier and drop that head."""
        architecture = self.architecture or ""
        model_class = getattr(transformers, architecture, None) if architecture.endswith("WithTeacher") else None
        if model_class is not None:
            return model_class.from_pretrained(name_or_path, **kwargs)
        return super().load_model(name_or_path, **kwargs)

    def prepare(self, student: nn.Module, teacher: nn.Module, args: Any) -> None:
        """A student whose ``forward`` takes no ``labels`` (DeiT with teacher) would make `Trainer` drop the
        ``labels`` column as unused; keep it (``args.label_names = ["labels"]``) unless label names are set."""
        forward = inspect.signature(type(base_model_of(student)).forward).parameters
        if "labels" not in forward and getattr(args, "label_names", None) is None:
            args.label_names = ["labels"]

    def item_mask(self, batch: dict[str, Any]) -> torch.Tensor:
        pixels = self._pixels(batch)
        return torch.ones(pixels.shape[0], dtype=torch.bool, device=pixels.device)

    @staticmethod
    def _pixels(batch: dict[str, Any]) -> torch.Tensor:
        pixels = batch.get("pixel_values")
        if not isinstance(pixels, torch.Tensor):
            raise ValueError(
                f"A vision batch needs `pixel_values` (a [B, C, H, W] tensor), got keys {sorted(batch)}. Preprocess "
                "images with the model's image processor (e.g. AutoImageProcessor) into a `pixel_values` column."
            )
        return pixels

    def model_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {"pixel_values": self._pixels(batch)}

    def example_inputs(self, model: nn.Module) -> dict[str, Any]:
        """One image of the size the model's config names (``image_size``, default 32) and its channel count."""
        config = getattr(base_model_of(model), "config", None)
        size = getattr(config, "image_size", None) or 32
        height, width = (size, size) if isinstance(size, int) else tuple(size)[:2]
        channels = getattr(config, "num_channels", None) or 3
        return {"pixel_values": torch.zeros(1, channels, height, width)}

    def run(self, model: nn.Module, batch: dict[str, Any], requires: frozenset[str]) -> Signals:
        outputs = model(**self.model_inputs(batch), **self.output_kwargs(requires))
        cls_logits = getattr(outputs, "cls_logits", None)
        return Signals(
            logits=cls_logits if cls_logits is not None else outputs.logits,
            distillation_logits=getattr(outputs, "distillation_logits", None),
            labels=batch.get("labels"),
            mask=self.item_mask(batch),
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )

    def eval_sums(self, student: Signals, teacher: Signals | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if student.distillation_logits is not None:  # DeiT predicts with the average of its two heads
            student = Signals(logits=(student.logits + student.distillation_logits) / 2, labels=student.labels,
                              mask=student.mask)
        return super().eval_sums(student, teacher)
