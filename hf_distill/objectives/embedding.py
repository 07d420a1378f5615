"""Embedding objectives: align the student's pooled embeddings with the teacher's.

``embedding_mse``, ``embedding_cosine`` and ``embedding_l2`` compare embeddings row by row and can learn a linear
projection from the student's width to the teacher's (``projection``); ``similarity_kd`` compares the in-batch
similarity structure, so it needs no projection at all; ``aligned_contrastive`` asks each row's student embedding
to find the teacher's embedding of the row's positive text (a relevant passage) among the batch's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .. import losses
from ..signals import Signals
from .base import OBJECTIVES, Objective, positive_number
from .projection import check_projection_mode, make_projection

__all__ = ["AlignedContrastive", "EmbeddingAlignment", "EmbeddingMSE", "EmbeddingCosine", "EmbeddingL2",
           "SimilarityKD", "saved_projection_source"]

class EmbeddingAlignment(Objective):
    """Row-wise alignment of ``student.embeddings`` ``[B, d_s]`` with ``teacher.embeddings`` ``[B, d_t]``.

    ``projection``: ``"auto"`` (default) learns ``nn.Linear(d_s, d_t)`` only when the widths differ; ``True``
    always learns one (also for equal widths, initialised to the identity); ``False`` never (unequal widths are
    then an error before training). The projection is trained with the student, saved with it
    (``distill_objectives.safetensors``, and as a ``Dense`` module of the sentence-transformers export), so the
    student's projected embeddings live in the teacher's space.
    """

    requires = frozenset({"embeddings"})

    def __init__(self, projection: bool | str = "auto") -> None:
        super().__init__()
        self.projection_mode = check_projection_mode(projection)
        self.projection: nn.Linear | None = None

    def setup(self, task: Any, student: nn.Module, teacher: nn.Module) -> None:
        width = getattr(task, "embedding_width", None)
        if width is None:
            raise ValueError(f"Objective {self.name!r} needs embeddings; use it with `task='embedding'`.")
        self.projection = make_projection(width(student), width(teacher), self.projection_mode, self.name,
                                          hint=", or use `similarity_kd`, which needs none")

    def project(self, embeddings: torch.Tensor) -> torch.Tensor:
        if self.projection is None:
            return embeddings
        return self.projection(embeddings.to(self.projection.weight.dtype))

    loss: Any  # a function of `hf_distill.losses` taking (student, teacher, reduction)

    def forward(self, student: Signals, teacher: Signals | None) -> torch.Tensor:
        keep = student.mask
        return type(self).loss(self.project(student.embeddings[keep]), teacher.embeddings[keep], reduction="sum")


def saved_projection_source(objectives: Iterable[Objective]) -> EmbeddingAlignment | None:
    """The row-wise embedding objective whose projection the saved student applies to its embeddings (the first one
    that learned a projection; `EmbeddingTask.save_extras` exports it as the ``Dense`` module), or None. Other
    objectives' projections (``hidden_mse``'s, ``feature_mse``'s) map hidden features, not embeddings."""
    return next((o for o in objectives if isinstance(o, EmbeddingAlignment) and o.projection is not None), None)


@OBJECTIVES.register
class EmbeddingMSE(EmbeddingAlignment):
    """Mean squared error per element (sentence-transformers' MSELoss; `losses.embedding_mse` over the batch)."""

    name = "embedding_mse"
    loss = staticmethod(losses.embedding_mse)


@OBJECTIVES.register
class EmbeddingCosine(EmbeddingAlignment):
    """``1 − cos(student_i, teacher_i)`` per row (`losses.embedding_cosine` over the batch)."""

    name = "embedding_cosine"
    loss = staticmethod(losses.embedding_cosine)


@OBJECTIVES.register
class EmbeddingL2(EmbeddingAlignment):
    """Euclidean distance ``||student_i − teacher_i||₂`` per row (LEAF's alignment loss; `losses.embedding_l2`)."""

    name = "embedding_l2"
    loss = staticmethod(losses.embedding_l2)


@OBJECTIVES.register
class SimilarityKD(Objective):
    """Relational KD: match the in-batch cosine-similarity matrices of student and teacher.

    Per row ``i``: ``mean_j (cos(s_i, s_j) − cos(t_i, t_j))²``; widths may differ (no projection). See
    `losses.similarity_kd`. Park et al. 2019, "Relational Knowledge Distillation", arXiv:1904.05068.
    """

    name = "similarity_kd"
    requires = frozenset({"embeddings"})

    def forward(self, student: Signals, teacher: Signals | None) -> torch.Tensor:
        keep = student.mask
        return losses.similarity_kd(student.embeddings[keep], teacher.embeddings[keep], reduction="sum")


@OBJECTIVES.register
class AlignedContrastive(Objective):
    """The student's embedding of each row's text against the **teacher's** embeddings of every row's positive
    (`losses.aligned_contrastive`, an InfoNCE / MultipleNegativesRankingLoss whose candidates the teacher encodes).

    For teacher-aligned query encoders (the quickstart, LEAF's setting): the student's queries will search an index
    the teacher built, so each query is trained to rank the teacher's embedding of its relevant passage above the
    teacher's embeddings of the batch's other passages. The data gives each row a ``positive`` text (rows without
    one only take part in the other objectives; `tasks.embedding.add_positive_tokens`). Only rows with a positive
    count, summed and divided like every objective by the batch's rows, so with few such rows raise ``weight``.
    Training data without positives is refused before the first step; evaluation data without them adds 0.

    ``scale``: the similarity scale (inverse temperature), 20 as in sentence-transformers. The student's embeddings
    are compared with the teacher's as the saved student gives them: through the projection of an embedding
    objective beside it (``embedding_cosine`` / ``_mse`` / ``_l2`` with a projection; the first one's, which is the
    one saved), which this term then trains too; without one, student and teacher must have the same width.
    """

    name = "aligned_contrastive"
    requires = frozenset({"embeddings"})
    teacher_requires = frozenset({"positive_embeddings"})

    def __init__(self, scale: float = 20.0) -> None:
        super().__init__()
        self.scale = positive_number(scale, "scale")
        self.widths: tuple[int, int] | None = None
        self._project: Any = None  # another objective's `project` (not a submodule: its projection is saved there)

    def setup(self, task: Any, student: nn.Module, teacher: nn.Module) -> None:
        width = getattr(task, "embedding_width", None)
        if width is None:
            raise ValueError(f"Objective {self.name!r} needs embeddings; use it with `task='embedding'`.")
        self.widths = (width(student), width(teacher))

    def link(self, objectives: list[Objective]) -> None:
        source = saved_projection_source(objectives)
        student_width, teacher_width = self.widths
        self._project = None if source is None else source.project
        if source is not None:
            student_width = source.projection.out_features
        if student_width != teacher_width:
            raise ValueError(f"Objective {self.name!r} compares the student's embeddings with the teacher's directly, "
                             f"but their widths differ ({student_width} vs {teacher_width}). Use a student of the "
                             "teacher's width, or add a projected embedding objective beside it (e.g. "
                             "`{name: embedding_cosine, projection: true}`), whose projection it then trains through.")

    def forward(self, student: Signals, teacher: Signals | None) -> torch.Tensor:
        if teacher.positive_embeddings is None:  # evaluation data without positives (training's is checked first)
            return student.embeddings.sum() * 0.0
        keep = student.mask & teacher.positive_mask.to(student.mask.device)
        embeddings = student.embeddings[keep]
        if self._project is not None:
            embeddings = self._project(embeddings)
        return losses.aligned_contrastive(embeddings, teacher.positive_embeddings[keep], scale=self.scale,
                                          reduction="sum")
