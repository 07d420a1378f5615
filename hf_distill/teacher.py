"""Loading and preparing the teacher, checking it against the student, and the live teacher source."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase
from transformers.utils import logging

from .checks import remote_code_guard
from .signals import Signals, combine_signals
from .tasks import TaskAdapter, base_model_of

logger = logging.get_logger(__name__)

__all__ = [
    "load_teacher",
    "freeze_teacher",
    "shared_logit_width",
    "LiveTeacher",
    "NoTeacher",
    "ScoresColumnTeacher",
    "StudentBaseTeacher",
    "EnsembleTeacher",
]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_teacher(
    teacher: nn.Module | str, task: TaskAdapter, dtype: str = "auto", init_kwargs: dict[str, Any] | None = None
) -> nn.Module:
    """The teacher as a module: loaded with the task's auto class when given as a path or hub id, cast to
    ``dtype`` unless ``"auto"``."""
    if isinstance(teacher, str):
        kwargs = dict(init_kwargs or {})
        kwargs["dtype"] = _DTYPES.get(dtype, "auto")
        try:
            with remote_code_guard(teacher, "set teacher_model_init_kwargs={'trust_remote_code': True} (in a recipe: "
                                   "teacher.init_kwargs.trust_remote_code: true)"):
                teacher = task.load_model(teacher, **kwargs)
        except OSError as err:
            raise OSError(
                f"Could not load the teacher {teacher!r} ({err}). Give a local folder written by "
                "`save_pretrained`, a hub id reachable from this machine, or a loaded model."
            ) from err
    elif not isinstance(teacher, nn.Module):
        raise TypeError(
            f"`teacher_model` must be a model, a local path or a hub id, got {type(teacher).__name__}."
        )
    elif dtype != "auto":
        teacher = teacher.to(_DTYPES[dtype])
    return teacher


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """Eval mode (no dropout) and no gradients, so it is never trained nor given optimizer state."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def _same_vocabulary(student_tokenizer: Any, teacher_tokenizer: Any) -> bool:
    return student_tokenizer.get_vocab() == teacher_tokenizer.get_vocab()


def shared_logit_width(
    task: TaskAdapter,
    student: nn.Module,
    teacher: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None = None,
    teacher_tokenizer: PreTrainedTokenizerBase | None = None,
) -> int | None:
    """Check that teacher and student logits can be compared; return the width to slice the teacher's logits
    to (its vocabulary is padded beyond the student's), or None when they are equal or have no logits.

    Raises ``ValueError`` naming both sizes for any other mismatch, before training starts.
    """
    student_width = task.logit_width(base_model_of(student))
    teacher_width = task.logit_width(base_model_of(teacher))
    if student_width is None or teacher_width is None or student_width == teacher_width:
        if tokenizer is not None and teacher_tokenizer is not None and hasattr(tokenizer, "get_vocab"):
            if not _same_vocabulary(tokenizer, teacher_tokenizer):
                raise ValueError(
                    "The teacher's tokenizer differs from the student's, so their logits index different tokens. "
                    "Use a teacher and student that share a tokenizer (cross-tokenizer distillation is not "
                    "supported)."
                )
        return None
    if not task.allows_padded_teacher:
        raise ValueError(
            f"The student has {student_width} outputs but the teacher has {teacher_width}; {task.name} logits must "
            f"match one to one. Build the student with num_labels={teacher_width} (and the teacher's id2label)."
        )
    if teacher_width < student_width:
        raise ValueError(
            f"The student's vocabulary ({student_width}) is larger than the teacher's ({teacher_width}); logit "
            "distillation needs the same vocabulary. Resize the student with "
            f"`student.resize_token_embeddings({teacher_width})` or pick a teacher with the student's tokenizer."
        )
    if tokenizer is not None and len(tokenizer) > student_width:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the student's vocabulary is {student_width} and the "
            f"teacher's {teacher_width}; they do not share a tokenizer. Resize the student to the tokenizer or "
            "use matching models."
        )
    if tokenizer is not None and teacher_tokenizer is not None and not _same_vocabulary(tokenizer, teacher_tokenizer):
        raise ValueError(
            f"The teacher's vocabulary ({teacher_width}) is wider than the student's ({student_width}) and their "
            "tokenizers differ, so the shared range does not hold the same tokens. Use a teacher and student that "
            "share a tokenizer."
        )
    logger.warning(
        f"The teacher's vocabulary ({teacher_width}) is padded beyond the student's ({student_width}); logits are "
        f"compared on the shared range [0, {student_width})"
        + ("." if teacher_tokenizer is not None else ", assuming both models use the same tokenizer there.")
    )
    return student_width


class LiveTeacher:
    """A teacher source that runs the frozen teacher on each batch under ``torch.no_grad()``."""

    def __init__(self, model: nn.Module, task: TaskAdapter, logit_width: int | None = None) -> None:
        self.model = model
        self.task = task
        self.logit_width = logit_width

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any], requires: frozenset[str]) -> Signals:
        signals = self.task.run(self.model, batch, requires)
        if self.logit_width is not None and signals.logits is not None:
            signals.logits = signals.logits[..., : self.logit_width]
        return signals


class ScoresColumnTeacher:
    """A teacher source that reads precomputed scores from the batch (``teacher_scores``, put there by the ranking
    collator from ``teacher_scores_column``) instead of running a model. Evaluation data without the column gives
    no teacher signals (the teacher's metrics are then not reported); training data must have it."""

    def __init__(self, task: TaskAdapter) -> None:
        self.task = task

    def __call__(self, batch: dict[str, Any], requires: frozenset[str]) -> Signals | None:
        if "teacher_scores" not in batch:
            return None
        return Signals(scores=batch["teacher_scores"].float(), mask=self.task.item_mask(batch))


class NoTeacher:
    """The teacher source of a run whose objectives need no teacher (e.g. a label-only baseline): no signals."""

    def __call__(self, batch: dict[str, Any], requires: frozenset[str]) -> None:
        return None


class StudentBaseTeacher:
    """The teacher source of self-distillation into an adapter: the PEFT student's own base model, run with its
    adapters disabled, in eval mode (no dropout) and under ``torch.no_grad()``; no second copy of the model."""

    def __init__(self, student: nn.Module, task: TaskAdapter) -> None:
        self.student = student
        self.task = task

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any], requires: frozenset[str]) -> Signals:
        was_training = self.student.training
        self.student.eval()
        try:
            with self.student.disable_adapter():
                return self.task.run(self.student, batch, requires)
        finally:
            self.student.train(was_training)


class EnsembleTeacher:
    """A teacher source made of several teacher sources (e.g. one `LiveTeacher` per teacher model), whose signals
    for each batch are combined into one teacher's `Signals` by `hf_distill.signals.combine_signals`, so objectives
    and metrics see a single teacher.

    Args:
        sources: the teacher sources, each called as ``source(batch, requires)``.
        weights: one number >= 0 per source with a positive sum (normalised). A source of weight 0 is not run.
        combine: ``"probs"`` (logits of the weighted mixture of the teachers' distributions, `mixture_logits`) or
            ``"logits"`` (the weighted mean of their logits).
        temperature: with ``"probs"``, the temperature T at which the distributions are mixed: the combined logits
            ``T · log Σ_k w_k softmax(z_k / T)`` give exactly ``Σ_k w_k softmax(z_k / T)`` to an objective at
            temperature T. An objective at another temperature T' tempers that mixture (``∝ q^(T / T')``), which is
            not the mixture of the teachers' distributions at T'.
        names: how errors name each source (default ``teacher_model[k]``).

    A batch for which every source has no signals (e.g. evaluation data missing from a cache) gets None.
    """

    def __init__(self, sources: list[Any], weights: list[float], combine: str = "probs", temperature: float = 1.0,
                 names: list[str] | None = None) -> None:
        if len(weights) != len(sources):
            raise ValueError(f"`teacher_weights` has {len(weights)} entries but there are {len(sources)} teachers; "
                             "give one weight per teacher.")
        self.sources = list(sources)
        self.weights = [float(w) for w in weights]
        self.combine = combine
        self.temperature = temperature
        self.names = names or [f"`teacher_model[{k}]`" for k in range(len(sources))]

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any], requires: frozenset[str]) -> Signals | None:
        active = [k for k, w in enumerate(self.weights) if w > 0]
        outputs = [self.sources[k](batch, requires) for k in active]
        if all(out is None for out in outputs):
            return None
        missing = [self.names[k] for k, out in zip(active, outputs, strict=True) if out is None]
        if missing:
            raise ValueError(f"{', '.join(missing)} gave no signals for this batch while the other teachers did; every "
                             "teacher must cover the same data.")
        return combine_signals(outputs, [self.weights[k] for k in active], self.combine, self.temperature,
                               [self.names[k] for k in active])
