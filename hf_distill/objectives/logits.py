"""Logit objectives: ``kl``, ``reverse_kl``, ``jsd`` (teacher vs student distributions), ``ce`` (labels), ``dkd`` and
``pld`` (teacher and labels), and ``deit_distill`` (DeiT's distillation head)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers.utils import logging

from .. import chunked_losses, losses
from ..signals import Signals, logit_divergence
from .base import OBJECTIVES, Objective

logger = logging.get_logger(__name__)

__all__ = ["KLObjective", "ReverseKLObjective", "JSDObjective", "CEObjective", "DKDObjective", "PLDObjective",
           "AdaptiveKDObjective", "DeiTDistillObjective", "JointLogitTerms", "JOINT_CHUNK_SIZE",
           "joint_chunk_size"]


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

    def __init__(self, temperature: float = 1.0, chunk_size: int | None = None, fused: bool = False) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)
        self.chunk_size = _check_chunk_size(chunk_size)
        if not isinstance(fused, bool):
            raise ValueError(f"`fused` must be true or false, got {fused!r}.")
        #: Training computes this divergence (and `ce`, if present) from the student's final hidden states and LM
        #: head, chunk by chunk, without the student's full logits (`JointLogitTerms`).
        self.fused = fused
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

    def __init__(self, beta: float = 0.5, temperature: float = 1.0, chunk_size: int | None = None,
                 fused: bool = False) -> None:
        super().__init__(temperature, chunk_size, fused)
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


#: Rows per chunk of the one-pass divergence + `ce` (`chunked_losses.divergence_ce`, and the fused variant) when the
#: divergence objective sets no `chunk_size`: 128 on a CPU (32 is as fast with one thread, 302 vs 316 ms CPU at
#: V = 30,522, but its four times as many small operations lost to 128 with two threads on a loaded machine: 2.79
#: vs 2.07 s per step in benchmarks/vs_trl.py); 1024 on an accelerator (fewer kernel launches; the working set is
#: then ~7 × 1024 × V × 4 bytes, 0.9 GiB at 32k).
JOINT_CHUNK_SIZE = 128
JOINT_CHUNK_SIZE_ACCELERATOR = 1024


def joint_chunk_size(device: torch.device) -> int:
    return JOINT_CHUNK_SIZE if device.type == "cpu" else JOINT_CHUNK_SIZE_ACCELERATOR


class JointLogitTerms:
    """A divergence objective (``kl``, ``reverse_kl``, ``jsd``) and the ``ce`` objective on the same student logits,
    computed in one pass (`chunked_losses.divergence_ce`): one student log-softmax per chunk serves both (at T = 1;
    at T ≠ 1 the divergence's tempered one is computed beside it) and one closed-form gradient buffer holds the sum
    of both gradients. The values and gradients are those of the two objectives computed separately.

    With ``fused: true`` on the divergence, training runs the student without its full logits (the task's
    ``head_hidden``) and computes both terms from its final hidden states and LM head
    (`chunked_losses.fused_linear_divergence_ce`); ``ce`` is then optional. Every other objective reading the
    student's logits is refused, as they would not exist.

    In a language task a divergence without ``ce`` takes the same path (``ce`` weight 0): chunk by chunk with the
    closed-form gradient, as ``chunk_size`` would, the same values as the dense functions, faster and leaner at a
    vocabulary's width (docs/benchmarks.md). A top-k teacher cache takes the same one pass over its k + 1 buckets
    (`chunked_losses.topk_divergence_ce`; fused too). The trainer asks `find` once; `applies` per batch (a batch
    without labels leaves the objectives to run separately)."""

    def __init__(self, divergence: Any, ce: Any | None, fused: bool) -> None:
        self.divergence_item, self.ce_item, self.fused = divergence, ce, fused
        self.keys = frozenset(item.key for item in (divergence, ce) if item is not None)

    @classmethod
    def find(cls, items: Any, language: bool = False) -> JointLogitTerms | None:
        """The plan for these objectives, or None. ``language``: a language task, where a divergence without
        ``ce`` also goes through the one-pass loss (chunk by chunk, closed-form gradient: the same values, faster
        and leaner than the dense functions at a vocabulary's width)."""
        divergences = [item for item in items if isinstance(item.objective, _TemperedDivergence)]
        ces = [item for item in items if isinstance(item.objective, CEObjective)]
        fused = [item for item in divergences if item.objective.fused]
        if fused:
            if len(divergences) > 1 or len(ces) > 1:
                raise ValueError(f"`fused: true` ({fused[0].key!r}) computes one divergence and at most one `ce` from "
                                 "the student's hidden states; this run has "
                                 f"{', '.join(item.key for item in divergences + ces)}. Keep one of each, or remove "
                                 "`fused`.")
            others = [item.key for item in items if item not in divergences + ces
                      and ("logits" in item.objective.requires or "distillation_logits" in item.objective.requires)]
            if others:
                raise ValueError(f"`fused: true` ({fused[0].key!r}) trains without the student's full logits, but "
                                 f"{', '.join(map(repr, others))} read them. Remove `fused` or those objectives.")
            return cls(fused[0], ces[0] if ces else None, True)
        if divergences and (ces or language):
            return cls(divergences[0], ces[0] if ces else None, False)
        return None

    def student_requires(self, requires: frozenset[str]) -> frozenset[str]:
        """What the student must produce in fused training: its head's inputs instead of its logits."""
        return (requires - {"logits"}) | {"head_hidden"} if self.fused else requires

    def applies(self, student: Signals, teacher: Signals | None) -> bool:
        if student.head_hidden is not None:
            if teacher is None or (teacher.logits is None and teacher.topk_indices is None):
                raise ValueError(f"`fused: true` ({self.divergence_item.key!r}) needs the teacher's logits or its "
                                 "top-k support (a live teacher or a teacher cache); this batch has neither. Remove "
                                 "`fused`.")
            return True
        if teacher is None or student.logits is None or (student.labels is None and self.ce_item is not None):
            return False
        if teacher.logits is not None:
            return teacher.logits.shape == student.logits.shape
        return teacher.topk_indices is not None and teacher.topk_indices.shape[:-1] == student.logits.shape[:-1]

    def terms(self, student: Signals, teacher: Signals) -> dict[str, torch.Tensor]:
        """``{key: weighted sum over the batch's items}`` for the two objectives. The divergence's entry carries the
        gradient of both; its value is still its own weighted term (the ``ce`` value, without gradient, is
        subtracted), so that logging and the summed loss are those of the separate objectives."""
        div_item, ce_item = self.divergence_item, self.ce_item
        if ce_item is not None and student.labels is None:
            ce_item.objective(student, teacher)  # raises its error: the batch has no labels
        objective = div_item.objective
        ce_weight = ce_item.weight if ce_item is not None and student.labels is not None else 0.0
        labels = student.labels if ce_item is not None else torch.full(
            student.mask.shape, -100, dtype=torch.long, device=student.mask.device)
        options = dict(divergence=objective.divergence, beta=objective.beta, temperature=objective.temperature,
                       divergence_weight=div_item.weight, ce_weight=ce_weight, mask=student.mask, reduction="sum",
                       chunk_size=objective.chunk_size or joint_chunk_size(student.mask.device))
        if student.head_hidden is not None:
            topk = None if teacher.logits is not None else (teacher.topk_logits, teacher.topk_indices,
                                                             teacher.tail_mass)
            out = chunked_losses.fused_linear_divergence_ce(student.head_hidden, student.head_weight, teacher.logits,
                                                            labels, student_bias=student.head_bias,
                                                            teacher_topk=topk, **options)
        elif teacher.logits is not None:
            out = chunked_losses.divergence_ce(student.logits, teacher.logits, labels, **options)
        else:  # a top-k teacher cache
            out = chunked_losses.topk_divergence_ce(student.logits, teacher.topk_logits, teacher.topk_indices,
                                                    teacher.tail_mass, labels, **options)
        terms = {div_item.key: out.total - ce_weight * out.ce}
        if ce_item is not None:
            terms[ce_item.key] = ce_weight * out.ce
        return terms


def _check_weight(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
    return float(value)


def _full_teacher_logits(name: str, teacher: Signals) -> torch.Tensor:
    if teacher.logits is None:
        raise ValueError(f"The `{name}` objective needs the teacher's full logits; a top-k teacher cache has only its "
                         "top-k support. Train with the live teacher (no `teacher_cache`) or use `kl`.")
    return teacher.logits


def _labels(name: str, student: Signals) -> torch.Tensor:
    if student.labels is None:
        raise ValueError(f"The `{name}` objective needs the ground-truth labels, but the batch has no `labels`. Add a "
                         f"`labels` column or remove `{name}` from `objectives`.")
    return student.labels


@OBJECTIVES.register
class DKDObjective(Objective):
    """Decoupled KD: ``T² · (alpha · TCKD + beta · NCKD)``, the target-class and non-target-class parts of
    ``KL(p_teacher || p_student)`` weighted separately (see `losses.dkd`; Zhao et al. 2022, arXiv:2203.08679).
    Needs labels; positions labelled ``-100`` do not count. Paper defaults: alpha 1, beta 8 (CIFAR-100; beta 0.5
    and T 1 on ImageNet), T 4."""

    name = "dkd"
    requires = frozenset({"logits", "labels"})

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> None:
        super().__init__()
        self.alpha = _check_weight("alpha", alpha)
        self.beta = _check_weight("beta", beta)
        self.temperature = _check_temperature(temperature)

    def forward(self, student: Signals, teacher: Signals | None) -> torch.Tensor:
        return losses.dkd(student.logits, _full_teacher_logits(self.name, teacher), _labels(self.name, student),
                          alpha=self.alpha, beta=self.beta, temperature=self.temperature, mask=student.mask,
                          reduction="sum")


@OBJECTIVES.register
class AdaptiveKDObjective(Objective):
    """KD and CE mixed per sample: ``α · T² · KL(p_teacher || p_student) + (1 − α) · CE``, with ``α`` the teacher's
    probability of the true label (``rule: confidence``) or 1/0 for a right/wrong teacher (``rule: correctness``)
    (see `losses.adaptive_kd`). It holds both terms, so it replaces ``kl`` + ``ce``. Needs labels; full teacher
    logits."""

    name = "adaptive_kd"
    requires = frozenset({"logits", "labels"})
    schedulable = ("temperature",)

    def __init__(self, temperature: float = 1.0, rule: str = "confidence") -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)
        if rule not in losses.ADAPTIVE_RULES:
            raise ValueError(f"`rule` must be one of {', '.join(losses.ADAPTIVE_RULES)}, got {rule!r}.")
        self.rule = rule

    def forward(self, student: Signals, teacher: Signals | None) -> torch.Tensor:
        return losses.adaptive_kd(student.logits, _full_teacher_logits(self.name, teacher),
                                  _labels(self.name, student), temperature=self.temperature, rule=self.rule,
                                  mask=student.mask, reduction="sum")


@OBJECTIVES.register
class PLDObjective(Objective):
    """Plackett-Luce distillation: the student's list-wise likelihood of the ranking "true label, then the other
    classes by descending teacher logit", each step weighted by the teacher's probability (temperature T) of the
    class chosen there (see `losses.pld`; Bassam et al. 2025, arXiv:2506.12542). It contains a weighted CE term, so
    it is meant to replace ``kl`` + ``ce``. Needs labels."""

    name = "pld"
    requires = frozenset({"logits", "labels"})

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)

    def forward(self, student: Signals, teacher: Signals | None) -> torch.Tensor:
        return losses.pld(student.logits, _full_teacher_logits(self.name, teacher), _labels(self.name, student),
                          temperature=self.temperature, mask=student.mask, reduction="sum")


_DEIT_MODES = ("hard", "soft")


@OBJECTIVES.register
class DeiTDistillObjective(Objective):
    """DeiT's distillation token: trains the student's distillation head (``Signals.distillation_logits``, from
    ``DeiTForImageClassificationWithTeacher``) on the teacher, while ``ce`` trains its class-token head on the labels.

    ``mode="hard"`` (DeiT's default, "hard-label distillation"): cross-entropy of the distillation head with the
    teacher's top-1 class, ``−log softmax(z_dist)[argmax z_teacher]`` (`losses.ce`). ``mode="soft"``: ``T² ·
    KL(p_teacher || p_dist)`` at temperature T (`losses.kl_div`, or the top-k form with a cached teacher). The paper
    weights ``ce`` and the distillation term ½ each. Touvron et al. 2021, "Training data-efficient image
    transformers & distillation through attention", arXiv:2012.12877."""

    name = "deit_distill"
    requires = frozenset({"logits", "distillation_logits"})

    def __init__(self, mode: str = "hard", temperature: float = 1.0) -> None:
        super().__init__()
        if mode not in _DEIT_MODES:
            raise ValueError(f"`mode` must be 'hard' or 'soft', got {mode!r}.")
        self.mode = mode
        self.temperature = _check_temperature(temperature)
        if mode == "hard" and self.temperature != 1.0:
            logger.warning(f"`temperature={temperature!r}` has no effect with `mode='hard'` (hard distillation uses "
                           "the teacher's argmax); remove it or use mode: soft.")

    def forward(self, student: Signals, teacher: Signals | None) -> torch.Tensor:
        if student.distillation_logits is None:
            raise ValueError(
                "The `deit_distill` objective trains a distillation head, but the student has none. Use a "
                "DeiTForImageClassificationWithTeacher student (its output has `distillation_logits`), or `kl` for "
                "other students."
            )
        head = Signals(logits=student.distillation_logits, mask=student.mask)
        if self.mode == "hard":
            return losses.ce(head.logits, teacher.top1(), mask=student.mask, reduction="sum")
        return logit_divergence(head, teacher, "kl", temperature=self.temperature, mask=student.mask,
                                reduction="sum")
