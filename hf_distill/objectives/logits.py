"""Logit objectives: ``kl``, ``reverse_kl``, ``jsd`` (teacher vs student distributions) and ``ce`` (labels)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from .. import losses
from ..signals import Signals
from .base import OBJECTIVES, Objective

__all__ = ["KLObjective", "ReverseKLObjective", "JSDObjective", "CEObjective"]


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < float("inf"):
        raise ValueError(f"`temperature` must be a finite number > 0, got {temperature!r}.")
    return float(temperature)


class _TemperedDivergence(Objective):
    """A divergence between teacher and student distributions at temperature T (``losses.<divergence>``)."""

    divergence: ClassVar[Callable[..., torch.Tensor]]

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)

    def forward(self, student: Signals, teacher: Signals | None) -> torch.Tensor:
        return type(self).divergence(
            student.logits, teacher.logits, temperature=self.temperature, mask=student.mask, reduction="sum"
        )


@OBJECTIVES.register
class KLObjective(_TemperedDivergence):
    """Forward KL, ``KL(p_teacher || p_student)`` at temperature T, scaled by T² (see `losses.kl_div`)."""

    name = "kl"
    divergence = staticmethod(losses.kl_div)


@OBJECTIVES.register
class ReverseKLObjective(_TemperedDivergence):
    """Reverse KL, ``KL(p_student || p_teacher)`` at temperature T, scaled by T² (see `losses.reverse_kl`)."""

    name = "reverse_kl"
    divergence = staticmethod(losses.reverse_kl)


@OBJECTIVES.register
class JSDObjective(Objective):
    """Generalized JSD with teacher share ``beta`` of the mixture (see `losses.jsd`)."""

    name = "jsd"

    def __init__(self, beta: float = 0.5, temperature: float = 1.0) -> None:
        super().__init__()
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta <= 1:
            raise ValueError(f"`beta` must be a number in [0, 1], got {beta!r}.")
        self.beta = float(beta)
        self.temperature = _check_temperature(temperature)

    def forward(self, student: Signals, teacher: Signals | None) -> torch.Tensor:
        return losses.jsd(
            student.logits,
            teacher.logits,
            beta=self.beta,
            temperature=self.temperature,
            mask=student.mask,
            reduction="sum",
        )


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
