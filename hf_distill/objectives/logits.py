"""Logit objectives: ``kl``, ``reverse_kl``, ``jsd`` (teacher vs student distributions) and ``ce`` (labels)."""

from __future__ import annotations

from typing import ClassVar

import torch

from .. import losses
from ..signals import Signals, logit_divergence
from .base import OBJECTIVES, Objective

__all__ = ["KLObjective", "ReverseKLObjective", "JSDObjective", "CEObjective"]


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < float("inf"):
        raise ValueError(f"`temperature` must be a finite number > 0, got {temperature!r}.")
    return float(temperature)


def _check_chunk_size(chunk_size: int | None) -> int | None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"`chunk_size` must be a positive integer (positions per chunk) or null, got {chunk_size!r}.")
    return chunk_size


class _TemperedDivergence(Objective):
    """A divergence between teacher and student distributions at temperature T. The teacher's distribution is
    its full logits (live teacher, full-logit cache) or a cached top-k support (`losses.topk_divergence`).
    ``chunk_size`` computes it ``chunk_size`` positions at a time (`losses.chunked_divergence`: the same value and
    gradient without the full-batch float32 intermediates; for large vocabularies)."""

    divergence: ClassVar[str]
    schedulable = ("temperature",)

    def __init__(self, temperature: float = 1.0, chunk_size: int | None = None) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)
        self.chunk_size = _check_chunk_size(chunk_size)
        self.beta = 0.5

    def forward(self, student: Signals, teacher: Signals | None) -> torch.Tensor:
        return logit_divergence(student, teacher, type(self).divergence, beta=self.beta,
                                temperature=self.temperature, mask=student.mask, reduction="sum",
                                chunk_size=self.chunk_size)


@OBJECTIVES.register
class KLObjective(_TemperedDivergence):
    """Forward KL, ``KL(p_teacher || p_student)`` at temperature T, scaled by T² (see `losses.kl_div`)."""

    name = "kl"
    divergence = "kl"


@OBJECTIVES.register
class ReverseKLObjective(_TemperedDivergence):
    """Reverse KL, ``KL(p_student || p_teacher)`` at temperature T, scaled by T² (see `losses.reverse_kl`)."""

    name = "reverse_kl"
    divergence = "reverse_kl"


@OBJECTIVES.register
class JSDObjective(_TemperedDivergence):
    """Generalized JSD with teacher share ``beta`` of the mixture (see `losses.jsd`)."""

    name = "jsd"
    divergence = "jsd"
    schedulable = ("temperature", "beta")

    def __init__(self, beta: float = 0.5, temperature: float = 1.0, chunk_size: int | None = None) -> None:
        super().__init__(temperature, chunk_size)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta <= 1:
            raise ValueError(f"`beta` must be a number in [0, 1], got {beta!r}.")
        self.beta = float(beta)


@OBJECTIVES.register
class CEObjective(Objective):
    """Cross-entropy of the student with the ground-truth labels (see `losses.ce`); no teacher involved."""

    name = "ce"
    requires = frozenset({"logits", "labels"})
    uses_teacher = False

    def forward(self, student: Signals, teacher: Signals | None) -> torch.Tensor:
        if student.labels is None:
            raise ValueError(
                "The `ce` objective needs labels, but the batch has no `labels`. Add a `labels` column (for "
                "language models, e.g. DataCollatorForLanguageModeling(tokenizer, mlm=False)) or remove `ce` "
                "from `objectives`."
            )
        return losses.ce(student.logits, student.labels, mask=student.mask, reduction="sum")
