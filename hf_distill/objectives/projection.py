"""Learned linear projections from the student's width to the teacher's, shared by every objective that aligns
student and teacher vectors (pooled embeddings, hidden states, module features).

A projection is an ordinary submodule of its objective: the trainer trains it with the student (its own optimizer
parameter group), and saves and reloads it with the objectives' state (``distill_objectives.safetensors``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PROJECTION_CHOICES", "check_projection_mode", "make_projection"]

#: ``"auto"``: a projection only when the widths differ; ``True``: always (identity-initialised when they are
#: equal); ``False``: never (unequal widths are an error before training).
PROJECTION_CHOICES = ("auto", True, False)


def check_projection_mode(projection: bool | str) -> bool | str:
    if projection not in PROJECTION_CHOICES:
        raise ValueError(f"`projection` must be 'auto', true or false, got {projection!r}.")
    return projection


def make_projection(
    d_student: int, d_teacher: int, mode: bool | str, objective: str, hint: str = ""
) -> nn.Linear | None:
    """``nn.Linear(d_student, d_teacher)`` or None, as ``mode`` asks (see `PROJECTION_CHOICES`).

    With equal widths and ``mode=True`` the projection starts as the identity, so training starts from the plain
    comparison. ``objective`` and ``hint`` (what else the user can do) make the error for ``mode=False`` with
    unequal widths.
    """
    if mode is False and d_student != d_teacher:
        raise ValueError(
            f"Objective {objective!r}: the student's vectors have width {d_student} and the teacher's {d_teacher}, and "
            f"`projection` is false. Set projection: auto to learn a projection{hint}."
        )
    if mode is not True and d_student == d_teacher:
        return None
    projection = nn.Linear(d_student, d_teacher)
    if d_student == d_teacher:
        with torch.no_grad():
            projection.weight.copy_(torch.eye(d_student))
            projection.bias.zero_()
    return projection
