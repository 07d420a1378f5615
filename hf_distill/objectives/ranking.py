"""Ranking objectives: ``margin_mse`` and ``listwise_kl`` (teacher → student) and ``ranking_ce`` (labels only).

All read ``Signals.scores`` ``[B, C]`` (each query's candidates, the positive first) or, with in-batch negatives,
``Signals.batch_scores`` ``[B, B·C]``, as produced by the ``ranking`` task for bi- and cross-encoders alike.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import losses
from ..signals import Signals
from .base import OBJECTIVES, Objective, positive_number

__all__ = ["MarginMSEObjective", "ListwiseKLObjective", "RankingCEObjective"]


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be true or false, got {value!r}.")
    return value


class _RankingObjective(Objective):
    requires = frozenset({"scores"})

    def __init__(self, in_batch_negatives: bool = False) -> None:
        super().__init__()
        self.in_batch_negatives = _flag(in_batch_negatives, "in_batch_negatives")
        self.requires = frozenset({"batch_scores" if self.in_batch_negatives else "scores"})

    def setup(self, task: Any, student: Any, teacher: Any) -> None:
        kind_of = getattr(task, "kind_of", None)
        if kind_of is None:
            raise ValueError(f"Objective {self.name!r} scores query/passage candidates; use it with `task='ranking'`.")
        if not self.in_batch_negatives:
            return
        models = {"student": student, "teacher": teacher} if self.uses_teacher else {"student": student}
        for role, model in models.items():
            if model is None and role == "teacher" and "batch_scores" in task.cached_signals:
                continue  # a cache that kept the bi-encoder teacher's embeddings
            if model is None:
                raise ValueError(f"Objective {self.name!r}: `in_batch_negatives` needs a live bi-encoder teacher, or a "
                                 "teacher cache built with `in_batch_negatives=True`; a column of precomputed scores "
                                 "only covers each row's own candidates. Set it to false.")
            if kind_of(model) != "bi-encoder":
                raise ValueError(
                    f"Objective {self.name!r}: `in_batch_negatives` needs bi-encoders (one embedding per text, so "
                    f"every query can be scored against every passage of the batch), but the {role} is a "
                    "cross-encoder. Set in_batch_negatives: false."
                )

    def _scores(self, signals: Signals) -> torch.Tensor:
        return signals.batch_scores if self.in_batch_negatives else signals.scores


@OBJECTIVES.register
class MarginMSEObjective(_RankingObjective):
    """Margin-MSE (Hofstätter et al. 2020, arXiv:2010.02666): the student matches the teacher's score margins
    ``t_pos − t_neg_j`` for every negative ``j`` (`losses.margin_mse`), so the two may be different architectures
    whose scores differ by a constant.

    Their *scales* must still agree, which they often do not (a cross-encoder's logits span tens, a cosine
    bi-encoder's scores lie in [-1, 1]; sentence-transformers issue #3540). Two options change the teacher's scores
    before the margins are taken:

    * ``teacher_scale``: multiply them by this constant (e.g. 0.1 for logits around ±10 and a cosine student);
    * ``standardize``: z-score them over the micro-batch (all candidates of all its queries), so the student
      learns margins in units of the teacher's score spread. The statistics are per micro-batch, so the update
      depends slightly on how a batch is split for gradient accumulation. ``teacher_scale`` applies afterwards.

    ``in_batch_negatives``: the margins are taken against every other passage of the batch too (each query's
    positive minus all ``B·C − 1`` other candidates, its own hard negatives and every other query's candidates),
    as TAS-Balanced's in-batch teacher signal does (Hofstätter et al. 2021); both models must be bi-encoders and
    the teacher live. Easy negatives then carry the teacher's margins as well as the hard ones.
    """

    name = "margin_mse"

    def __init__(self, teacher_scale: float = 1.0, standardize: bool = False, in_batch_negatives: bool = False) -> None:
        super().__init__(in_batch_negatives=in_batch_negatives)
        self.teacher_scale = positive_number(teacher_scale, "teacher_scale")
        self.standardize = _flag(standardize, "standardize")

    def forward(self, student: Signals, teacher: Signals | None) -> torch.Tensor:
        keep = student.mask
        s, t = self._scores(student).float(), self._scores(teacher).float()
        positive = student.labels if student.labels is not None else s.new_zeros(s.shape[0], dtype=torch.long)
        if self.in_batch_negatives:  # query i's positive is column i·C of the [B, B·C] matrix
            positive = torch.arange(s.shape[0], device=s.device) * (s.shape[1] // s.shape[0]) + positive
        s, t, positive = s[keep], t[keep], positive[keep]
        if self.standardize and t.numel() > 1:
            t = (t - t.mean()) / t.std().clamp(min=1e-6)
        t = t * self.teacher_scale
        is_negative = torch.ones_like(s, dtype=torch.bool).scatter_(1, positive.unsqueeze(1), False)
        rows, negatives = s.shape[0], s.shape[1] - 1

        def split(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return scores.gather(1, positive.unsqueeze(1)).squeeze(1), scores[is_negative].view(rows, negatives)

        return losses.margin_mse(*split(s), *split(t), reduction="sum")


@OBJECTIVES.register
class ListwiseKLObjective(_RankingObjective):
    """Listwise KD: ``KL(p_teacher || p_student)`` between softmaxes over each query's candidates at temperature T,
    times T² (`losses.listwise_kl`).

    ``student_scale`` / ``teacher_scale`` multiply each model's scores first: a cosine bi-encoder needs a factor
    like 20 (its scores lie in [-1, 1], too flat for a softmax), a cross-encoder's logits usually none.
    ``in_batch_negatives``: every query is also scored against all other queries' candidates in the batch
    (``B·C`` candidates per query instead of ``C``); both models must be bi-encoders.
    """

    name = "listwise_kl"
    schedulable = ("temperature",)

    def __init__(
        self,
        temperature: float = 1.0,
        student_scale: float = 1.0,
        teacher_scale: float = 1.0,
        in_batch_negatives: bool = False,
    ) -> None:
        super().__init__(in_batch_negatives=in_batch_negatives)
        self.temperature = positive_number(temperature, "temperature")
        self.student_scale = positive_number(student_scale, "student_scale")
        self.teacher_scale = positive_number(teacher_scale, "teacher_scale")

    def forward(self, student: Signals, teacher: Signals | None) -> torch.Tensor:
        s = self._scores(student).float() * self.student_scale
        t = self._scores(teacher).float() * self.teacher_scale
        return losses.listwise_kl(s, t, temperature=self.temperature, mask=student.mask, reduction="sum")


@OBJECTIVES.register
class RankingCEObjective(_RankingObjective):
    """Contrastive cross-entropy on the labels alone (no teacher): ``−log softmax(scale · scores)[positive]`` per
    query (`losses.ce`), InfoNCE with the given hard negatives, and with ``in_batch_negatives`` also every other
    query's candidates (sentence-transformers' MultipleNegativesRankingLoss; ``scale`` 20 is its default for
    cosine scores). The baseline a distilled ranker has to beat, or a term mixed with ``margin_mse``.
    """

    name = "ranking_ce"
    uses_teacher = False

    def __init__(self, scale: float = 20.0, in_batch_negatives: bool = False) -> None:
        super().__init__(in_batch_negatives=in_batch_negatives)
        self.scale = positive_number(scale, "scale")
        self.requires = self.requires | {"labels"}

    def forward(self, student: Signals, teacher: Signals | None) -> torch.Tensor:
        scores = self._scores(student).float() * self.scale
        target = student.labels
        if self.in_batch_negatives:  # query i's positive is column i·C of the [B, B·C] matrix
            candidates = scores.shape[1] // scores.shape[0]
            target = torch.arange(scores.shape[0], device=scores.device) * candidates + student.labels
        return losses.ce(scores, target, mask=student.mask, reduction="sum")
