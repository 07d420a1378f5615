"""Pure tensor functions for distillation losses.

Every function here takes tensors, returns a scalar tensor and knows nothing about models, tasks or trainers,
so each can be checked against its paper's formula in isolation.

Conventions shared by the logit losses (``kl_div``, ``reverse_kl``, ``jsd``, ``ce``):

* ``student_logits`` and ``teacher_logits`` have shape ``[..., V]`` (``[B, V]`` for classifiers, ``[B, L, V]``
  for language models); every leading position is one distribution over ``V`` classes.
* ``mask`` (optional) has the leading shape ``[...]``; ``True`` means the position counts. The result is the
  mean over counted positions (``reduction="mean"``) or their sum (``reduction="sum"``, used by the trainer to
  normalise correctly across gradient-accumulation steps and processes). No counted position gives ``0``.
* Maths is done in float32 whatever the input dtype (bf16/fp16 logits are upcast), with ``log_softmax``
  throughout; a probability of exactly zero (e.g. a ``-inf`` logit) contributes zero, never ``0 * log 0 = nan``.
* ``temperature`` T divides the logits of both models before the softmax and the result is multiplied by T², so
  that gradient magnitudes stay comparable across temperatures (Hinton, Vinyals & Dean 2015, "Distilling the
  Knowledge in a Neural Network", arXiv:1503.02531).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "kl_div",
    "reverse_kl",
    "jsd",
    "topk_from_logits",
    "topk_divergence",
    "ce",
    "margin_mse",
    "listwise_kl",
    "embedding_mse",
    "embedding_cosine",
    "embedding_l2",
    "similarity_kd",
    "aligned_contrastive",
    "dkd",
    "pld",
    "adaptive_kd",
    "hidden_mse",
    "attention_kl",
]

Reduction = Literal["mean", "sum"]


def _check_temperature(temperature: float) -> None:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"`temperature` must be a finite number > 0, got {temperature!r}.")


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"`reduction` must be 'mean' or 'sum', got {reduction!r}.")


def _select(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten to ``[N, V]`` rows, keep only the counted rows, upcast to float32."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits must have the same shape, got {tuple(student_logits.shape)} and "
            f"{tuple(teacher_logits.shape)}. If the teacher's vocabulary is padded beyond the student's, slice the "
            "teacher logits to the student's vocabulary first (the trainer does this for you)."
        )
    vocab = student_logits.shape[-1]
    student = student_logits.reshape(-1, vocab)
    teacher = teacher_logits.reshape(-1, vocab)
    if mask is not None:
        if mask.shape != student_logits.shape[:-1]:
            raise ValueError(
                f"`mask` must have shape {tuple(student_logits.shape[:-1])} (the logits without the class "
                f"dimension), got {tuple(mask.shape)}."
            )
        keep = mask.reshape(-1).to(torch.bool)
        student, teacher = student[keep], teacher[keep]
    return student.float(), teacher.float()


def _check_same_shape(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"student and teacher embeddings must have the same shape, got {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}; when the widths differ, project the student first."
        )


def _tempered_log_probs(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None,
    reduction: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked arguments → ``(log p_s, log p_t)`` of the counted rows, ``[N, V]`` float32, at temperature T."""
    _check_temperature(temperature)
    _check_reduction(reduction)
    student, teacher = _select(student_logits, teacher_logits, mask)
    log_ps = F.log_softmax(_tempered(student, temperature), dim=-1)
    return log_ps, F.log_softmax(_tempered(teacher, temperature), dim=-1)


def _tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / T`` (no copy at T = 1)."""
    return logits if temperature == 1 else logits / temperature


def _dense(
    divergence: str,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float,
    temperature: float,
    mask: torch.Tensor | None,
    reduction: str,
) -> torch.Tensor:
    """The dense divergences. With finite logits (the usual case) every row is computed and uncounted rows are
    weighted 0, so no row is copied and no zero-probability guard is needed; otherwise the counted rows are selected
    and the guarded formulas handle ``-inf`` logits."""
    _check_temperature(temperature)
    _check_reduction(reduction)
    vocab = student_logits.shape[-1]
    if student_logits.shape != teacher_logits.shape or (mask is not None and mask.shape != student_logits.shape[:-1]):
        _select(student_logits, teacher_logits, mask)  # raises the shape error
    finite = bool(torch.isfinite(student_logits).all()) and bool(torch.isfinite(teacher_logits).all())
    if not finite:
        log_ps, log_pt = _tempered_log_probs(student_logits, teacher_logits, temperature, mask, reduction)
        return _reduce(_divergence_rows(divergence, log_ps, log_pt, beta), reduction) * temperature**2
    student = _tempered(student_logits.reshape(-1, vocab).float(), temperature)
    teacher = _tempered(teacher_logits.reshape(-1, vocab).float(), temperature)
    per_row = _divergence_rows(divergence, F.log_softmax(student, -1), F.log_softmax(teacher, -1), beta, True)
    if mask is None:
        return _reduce(per_row, reduction) * temperature**2
    keep = mask.reshape(-1).to(torch.bool)
    total = (per_row * keep).sum() * temperature**2
    if reduction == "sum":
        return total
    count = keep.sum()
    return total / count if int(count) > 0 else total


def _reduce(per_row: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    total = per_row.sum()
    if reduction == "sum" or per_row.numel() == 0:
        return total
    return total / per_row.numel()


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor, finite: bool = False) -> torch.Tensor:
    """Row-wise KL(p || q) = Σ_v p_v (log p_v − log q_v) from log-probabilities; terms with p_v = 0 are 0.
    ``finite``: the caller knows no log-probability is ``-inf``, so the guard below is not needed."""
    p = log_p.exp()
    if finite:
        return (p * (log_p - log_q)).sum(dim=-1)
    # Mask the log-ratio (not the product), so that 0 · (−inf − −inf) yields neither a NaN value nor a NaN gradient.
    log_ratio = torch.where(p > 0, log_p - log_q, torch.zeros_like(p))
    return (p * log_ratio).sum(dim=-1)


def kl_div(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Forward KL, the classic distillation loss: ``KL(p_teacher || p_student)``.

    Formula, with ``p = softmax(logits / T)`` per position::

        T² · mean over counted positions of  Σ_v p_t(v) · (log p_t(v) − log p_s(v))

    Mass-covering: the student is pushed to put probability wherever the teacher does.
    Paper: Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network", arXiv:1503.02531.

    Args:
        student_logits: ``[..., V]``.
        teacher_logits: ``[..., V]``, same shape.
        temperature: T > 0.
        mask: ``[...]`` booleans, True = the position counts.
        reduction: ``"mean"`` over counted positions or ``"sum"``.

    Example::

        >>> s, t = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])
        >>> round(kl_div(s, t).item(), 4)  # (σ(1) − σ(−1)) · 1 = 0.4621
        0.4621
    """
    return _dense("kl", student_logits, teacher_logits, 0.0, temperature, mask, reduction)


def reverse_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Reverse KL: ``KL(p_student || p_teacher)``.

    Formula, with ``p = softmax(logits / T)`` per position::

        T² · mean over counted positions of  Σ_v p_s(v) · (log p_s(v) − log p_t(v))

    Mode-seeking: the student concentrates on the teacher's main modes instead of covering all of them, which
    suits generative students too small to cover the teacher's whole distribution.
    Paper: Gu et al. 2024, "MiniLLM: Knowledge Distillation of Large Language Models", arXiv:2306.08543.

    Args and shapes as in :func:`kl_div`.

    Example::

        >>> s, t = torch.tensor([[0.0, 1.0]]), torch.tensor([[2.0, 0.0]])
        >>> round(reverse_kl(s, t).item(), 4), round(kl_div(s, t).item(), 4)  # the direction matters
        (1.0068, 0.8287)
    """
    return _dense("reverse_kl", student_logits, teacher_logits, 1.0, temperature, mask, reduction)


def jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence between teacher and student.

    Formula, with ``p = softmax(logits / T)`` per position and the mixture ``m = β·p_t + (1 − β)·p_s``::

        T² · mean over counted positions of  β · KL(p_t || m) + (1 − β) · KL(p_s || m)

    At β = 0.5 this is the symmetric JSD, ``½KL(p_t || m) + ½KL(p_s || m)`` with ``m = ½(p_t + p_s)``.
    The formula tends to 0 at both ends, so, as in the GKD paper and TRL, the end points are defined by the
    divergences it interpolates between: β = 0 gives the forward ``KL(p_t || p_s)`` (:func:`kl_div`) and
    β = 1 the reverse ``KL(p_s || p_t)`` (:func:`reverse_kl`).
    Paper: Agarwal et al. 2024, "On-Policy Distillation of Language Models: Learning from Self-Generated
    Mistakes" (GKD), arXiv:2306.13649.

    Args:
        beta: β in [0, 1], the teacher's share of the mixture.
        other args and shapes as in :func:`kl_div`.

    Example::

        >>> s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0]])
        >>> jsd(s, t).item()
        0.0
    """
    _check_beta(beta)
    return _dense("jsd", student_logits, teacher_logits, beta, temperature, mask, reduction)


DIVERGENCES = ("kl", "reverse_kl", "jsd")


def _check_beta(beta: float) -> None:
    if isinstance(beta, bool) or not (isinstance(beta, (int, float)) and 0.0 <= beta <= 1.0):
        raise ValueError(f"`beta` must be in [0, 1], got {beta!r}.")


def _divergence_rows(
    divergence: str, log_ps: torch.Tensor, log_pt: torch.Tensor, beta: float = 0.5, finite: bool = False
) -> torch.Tensor:
    """Row-wise divergence between distributions given as log-probabilities ``[N, C]`` (C classes or buckets):
    ``"kl"`` = KL(p_t || p_s), ``"reverse_kl"`` = KL(p_s || p_t), ``"jsd"`` = β·KL(p_t || m) + (1 − β)·KL(p_s || m)
    with m = β·p_t + (1 − β)·p_s (β = 0 → forward KL, β = 1 → reverse KL, as in :func:`jsd`). ``finite``: no
    log-probability is ``-inf`` (finite logits), so the zero-probability guards can be skipped."""
    if divergence == "kl" or (divergence == "jsd" and beta == 0.0):
        return _kl_rows(log_pt, log_ps, finite)
    if divergence == "reverse_kl" or (divergence == "jsd" and beta == 1.0):
        return _kl_rows(log_ps, log_pt, finite)
    if divergence != "jsd":
        raise ValueError(f"`divergence` must be one of {', '.join(DIVERGENCES)}, got {divergence!r}.")
    # log m = log(β·p_t + (1 − β)·p_s), computed without leaving log space. Where both are 0 (a -inf logit in both
    # models), m = 0 and the log-sum-exp is taken of zeros instead: its gradient at (-inf, -inf) would be NaN.
    if finite:
        log_m = torch.logaddexp(log_pt + math.log(beta), log_ps + math.log(1.0 - beta))
        return beta * _kl_rows(log_pt, log_m, True) + (1.0 - beta) * _kl_rows(log_ps, log_m, True)
    both_zero = torch.isneginf(log_pt) & torch.isneginf(log_ps)
    safe_t, safe_s = (torch.where(both_zero, torch.zeros_like(x), x) for x in (log_pt, log_ps))
    log_m = torch.logaddexp(safe_t + math.log(beta), safe_s + math.log(1.0 - beta))
    log_m = torch.where(both_zero, torch.full_like(log_m, float("-inf")), log_m)
    return beta * _kl_rows(log_pt, log_m) + (1.0 - beta) * _kl_rows(log_ps, log_m)


def topk_from_logits(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-k support of a distribution, as the teacher-signal cache stores it for each position.

    Returns ``(topk_logits, topk_indices, tail_mass)``: the ``k`` largest logits ``[..., k]`` (float32, in
    descending order), their vocabulary indices ``[..., k]`` and the probability mass outside them at T = 1,
    ``r = 1 − Σ_{v in top-k} softmax(logits)_v`` ``[...]`` (computed as a log-sum-exp of the other logits, so it
    is exact even when r is tiny; 0 when k = V).

    Example::

        >>> values, indices, tail = topk_from_logits(torch.tensor([[0.0, 2.0, 1.0]]), k=2)
        >>> indices.tolist(), round(tail.item(), 4)  # r = e^0 / (e^0 + e^2 + e^1)
        ([[1, 2]], 0.09)
    """
    vocab = logits.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab:
        raise ValueError(f"`k` must be an integer in [1, {vocab}] (the vocabulary size), got {k!r}.")
    logits = logits.float()
    values, indices = logits.topk(k, dim=-1)
    if k == vocab:
        return values, indices, logits.new_zeros(logits.shape[:-1])
    others = logits.scatter(-1, indices, float("-inf"))
    tail = torch.exp(torch.logsumexp(others, dim=-1) - torch.logsumexp(logits, dim=-1))
    return values, indices, tail


def _topk_bucket_log_probs(
    student: torch.Tensor, topk_logits: torch.Tensor, topk_indices: torch.Tensor, tail_mass: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, V]`` student logits and a ``[N, k]`` teacher support → ``(log p_s, log p_t)`` over the k + 1 buckets
    (the top-k tokens, then the tail), ``[N, k + 1]`` (``[N, k]`` when k = V), at temperature T."""
    vocab, k = student.shape[-1], topk_indices.shape[-1]
    scaled = _tempered(student, temperature)
    log_z = torch.logsumexp(scaled, dim=-1, keepdim=True)  # no full [N, V] log-softmax: only k + 1 buckets are read
    log_ps = scaled.gather(-1, topk_indices) - log_z
    log_pt = _topk_teacher_log_probs(topk_logits, tail_mass, vocab, temperature)
    if k == vocab:  # no tail: the support is the whole vocabulary
        return log_ps, log_pt
    # Student tail: log Σ_{v outside top-k} p_s(v), as a log-sum-exp over the other logits (stable near 0 and 1).
    log_ps_tail = torch.logsumexp(scaled.scatter(-1, topk_indices, float("-inf")), dim=-1) - log_z.squeeze(-1)
    return torch.cat([log_ps, log_ps_tail.unsqueeze(-1)], dim=-1), log_pt


def _topk_teacher_log_probs(topk_logits: torch.Tensor, tail_mass: torch.Tensor, vocab: int, temperature: float,
                            ) -> torch.Tensor:
    """A cached teacher's ``[N, k]`` top-k logits and ``[N]`` tail mass → its float32 log-probabilities over the
    k + 1 buckets (top-k tokens, then the tail) at temperature T, ``[N, k + 1]`` (``[N, k]`` when k = V)."""
    teacher = topk_logits.float() / temperature
    if topk_logits.shape[-1] == vocab:
        return F.log_softmax(teacher, dim=-1)
    # At T = 1 the tail's mass is r. The cache does not keep the tail's logits, so they are taken as equal:
    # z_tail = log Z − log(V − k) + log r with log Z = logsumexp(top-k logits) − log(1 − r); at temperature T the
    # tail then weighs (V − k)·exp(z_tail / T), i.e. log (V − k) + z_tail / T before normalisation (exact at T = 1).
    tail = tail_mass.float().clamp(0.0, 1.0)
    log_z = torch.logsumexp(topk_logits.float(), dim=-1) - torch.log1p(-tail.clamp(max=1.0 - 1e-7))
    log_m = math.log(vocab - topk_logits.shape[-1])
    z_tail = log_z - log_m + torch.log(tail)
    teacher_tail = log_m + z_tail / temperature
    return F.log_softmax(torch.cat([teacher, teacher_tail.unsqueeze(-1)], dim=-1), dim=-1)


def _check_topk_support(student_shape: torch.Size, topk_logits: torch.Tensor, topk_indices: torch.Tensor,
                        tail_mass: torch.Tensor) -> None:
    """Check a top-k teacher support against the student's logit shape ``[..., V]`` (or the shape its logits would
    have): top-k logits and indices ``[..., k]``, tail mass ``[...]``, k <= V."""
    lead = student_shape[:-1]
    if topk_logits.shape != topk_indices.shape or topk_logits.shape[:-1] != lead:
        raise ValueError(
            f"`teacher_topk_logits` and `teacher_topk_indices` (the top-k logits and indices) must both be "
            f"{(*lead, 'k')} for student logits {tuple(student_shape)}, got {tuple(topk_logits.shape)} and "
            f"{tuple(topk_indices.shape)}."
        )
    if tail_mass.shape != lead:
        raise ValueError(f"`teacher_tail_mass` (the tail mass) must have shape {tuple(lead)}, got "
                         f"{tuple(tail_mass.shape)}.")
    if topk_indices.shape[-1] > student_shape[-1]:
        raise ValueError(f"The teacher's support has k={topk_indices.shape[-1]} entries but the student's vocabulary "
                         f"only {student_shape[-1]}.")


def topk_divergence(
    student_logits: torch.Tensor,
    teacher_topk_logits: torch.Tensor,
    teacher_topk_indices: torch.Tensor,
    teacher_tail_mass: torch.Tensor,
    divergence: str = "kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """A divergence between the student and a teacher known only by its top-k support (a cached teacher).

    The teacher's distribution is known exactly on its top-k tokens ``K``; the rest of the vocabulary is one
    *tail bucket* holding the remaining mass ``r = 1 − Σ_{v in K} p_t(v)``. Both distributions are compared on
    the k + 1 buckets ``K ∪ {tail}``::

        p_t(v) for v in K,  p_t(tail) = r            (teacher, from the cache)
        p_s(v) for v in K,  p_s(tail) = Σ_{v not in K} p_s(v)   (student, from its full softmax)

    and ``divergence`` is applied to those bucket distributions exactly as the dense functions apply it to the
    full ones: ``"kl"`` = T² · Σ_b p_t(b) (log p_t(b) − log p_s(b)) = KL(p_t || p_s) (:func:`kl_div`),
    ``"reverse_kl"`` = KL(p_s || p_t) (:func:`reverse_kl`), ``"jsd"`` with teacher share ``beta`` (:func:`jsd`);
    mean (or sum) over counted positions.

    Accuracy: with k = V this *is* the dense divergence. At T = 1 it is a lower bound of the dense divergence
    (merging tokens into one bucket can only lose information), and for the forward KL the gap is exactly
    ``r · KL(p_t(·|tail) || p_s(·|tail))``: the teacher's tail mass times how differently the two models spread
    mass inside the tail — small when k covers most of the teacher's mass. At T ≠ 1 the tail's tempered mass is
    not in the cache; it is computed as if the teacher's tail logits were all equal (their T = 1 mass is r), which
    is exact at T = 1 and an approximation otherwise. The top-k support follows "Sparse Logit Sampling:
    Accelerating Knowledge Distillation in LLMs" (Anshumann et al. 2025, arXiv:2503.16870), which shows that
    plain top-k renormalised without the tail bucket is biased.

    Args:
        student_logits: ``[..., V]``.
        teacher_topk_logits: ``[..., k]`` the teacher's k largest logits at T = 1 (any order).
        teacher_topk_indices: ``[..., k]`` their vocabulary indices (distinct per position).
        teacher_tail_mass: ``[...]`` the teacher's probability mass outside its top-k at T = 1.
        divergence: ``"kl"``, ``"reverse_kl"`` or ``"jsd"``.
        beta: the teacher's share of the JSD mixture (``"jsd"`` only).
        temperature, mask, reduction: as in :func:`kl_div`.

    Example::

        >>> logits = torch.tensor([[0.0, 2.0, 1.0]])
        >>> support = topk_from_logits(logits, k=2)
        >>> topk_divergence(logits, *support).item()  # the student is the teacher: 0
        0.0
    """
    _check_temperature(temperature)
    _check_reduction(reduction)
    _check_beta(beta)
    if divergence not in DIVERGENCES:
        raise ValueError(f"`divergence` must be one of {', '.join(DIVERGENCES)}, got {divergence!r}.")
    _check_topk_support(student_logits.shape, teacher_topk_logits, teacher_topk_indices, teacher_tail_mass)
    lead = student_logits.shape[:-1]
    k, vocab = teacher_topk_indices.shape[-1], student_logits.shape[-1]
    student = student_logits.reshape(-1, vocab)
    values, indices, tail = teacher_topk_logits.reshape(-1, k), teacher_topk_indices.reshape(-1, k), teacher_tail_mass
    tail = tail.reshape(-1)
    if mask is not None:
        if mask.shape != lead:
            raise ValueError(f"`mask` must have shape {tuple(lead)} (the logits without the class dimension), got "
                             f"{tuple(mask.shape)}.")
        keep = mask.reshape(-1).to(torch.bool)
        if not bool(keep.all()):  # copy the counted rows only when some do not count
            student, values, indices, tail = student[keep], values[keep], indices[keep], tail[keep]
    log_ps, log_pt = _topk_bucket_log_probs(student.float(), values, indices.long(), tail, temperature)
    return _reduce(_divergence_rows(divergence, log_ps, log_pt, beta), reduction) * temperature**2


def _counted_labels(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``[...]`` booleans: the positions whose label is not ``-100`` and, if given, where ``mask`` is True; the shapes
    of ``labels`` (``logits`` without the class dimension) and ``mask`` checked."""
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"`labels` must have shape {tuple(logits.shape[:-1])} (the logits without the class "
            f"dimension), got {tuple(labels.shape)}."
        )
    keep = labels != -100
    if mask is not None:
        if mask.shape != labels.shape:
            raise ValueError(f"`mask` must have the shape of `labels` {tuple(labels.shape)}, got {tuple(mask.shape)}.")
        keep = keep & mask.to(torch.bool)
    return keep


def ce(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Cross-entropy with the ground-truth labels (the "hard" part of a KD + CE mix).

    Formula::

        mean over counted positions of  −log softmax(student_logits)[label]

    A position counts when its label is not ``-100`` (the Hugging Face ignore index) and, if given, ``mask`` is
    True there.

    Args:
        student_logits: ``[..., V]``.
        labels: ``[...]`` integer class ids, ``-100`` = ignore.
        mask: ``[...]`` booleans, optional.
        reduction: ``"mean"`` over counted positions or ``"sum"``.

    Example::

        >>> round(ce(torch.tensor([[0.0, 0.0]]), torch.tensor([1])).item(), 4)  # log 2
        0.6931
    """
    _check_reduction(reduction)
    keep = _counted_labels(student_logits, labels, mask)
    logits = student_logits.reshape(-1, student_logits.shape[-1]).float()
    if not bool(torch.isfinite(logits).all()):  # a row of -inf would poison the fused op: keep counted rows only
        logits, targets = logits[keep.reshape(-1)], labels.reshape(-1)[keep.reshape(-1)]
    else:  # the fused cross-entropy skips ignored rows itself, without copying the logits
        targets = labels.masked_fill(~keep, -100).reshape(-1)
    total = F.cross_entropy(logits, targets.long(), ignore_index=-100, reduction="sum")
    count = keep.sum()
    if reduction == "sum" or int(count) == 0:
        return total
    return total / count


def margin_mse(
    student_pos: torch.Tensor,
    student_neg: torch.Tensor,
    teacher_pos: torch.Tensor,
    teacher_neg: torch.Tensor,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Margin-MSE for ranking distillation: the student learns the teacher's score *margin*.

    Formula (signed margins, no absolute value)::

        mean over all elements of  ((s_pos − s_neg) − (t_pos − t_neg))²

    ``*_pos`` has shape ``[B]``; ``*_neg`` is ``[B]`` or ``[B, n]`` (n negatives per query; pos broadcasts).
    ``reduction="sum"`` sums the per-query means over the ``n`` negatives (``B`` × the mean), which is what the
    trainer divides by the number of queries in the whole accumulated batch. Only margins are compared, so a
    constant shift of either model's scores changes nothing; a different *scale* does (see the ``margin_mse``
    objective's ``teacher_scale`` / ``standardize``).
    Paper: Hofstätter et al. 2020, "Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge
    Distillation", arXiv:2010.02666.

    Example::

        >>> margin_mse(torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([5.0]), torch.tensor([3.0])).item()
        1.0
    """
    _check_reduction(reduction)
    if student_pos.shape != teacher_pos.shape or student_neg.shape != teacher_neg.shape:
        raise ValueError(
            "student and teacher scores must have the same shapes, got pos "
            f"{tuple(student_pos.shape)} vs {tuple(teacher_pos.shape)} and neg {tuple(student_neg.shape)} vs "
            f"{tuple(teacher_neg.shape)}."
        )
    if student_pos.dim() != 1 or student_neg.dim() not in (1, 2) or student_neg.shape[0] != student_pos.shape[0]:
        raise ValueError(
            f"`*_pos` must be [B] and `*_neg` [B] or [B, n] with the same B, got {tuple(student_pos.shape)} and "
            f"{tuple(student_neg.shape)}."
        )
    if student_neg.dim() == 1:
        student_neg, teacher_neg = student_neg.unsqueeze(-1), teacher_neg.unsqueeze(-1)
    student_margin = student_pos.float().unsqueeze(-1) - student_neg.float()
    teacher_margin = teacher_pos.float().unsqueeze(-1) - teacher_neg.float()
    return _reduce((student_margin - teacher_margin).pow(2).mean(dim=-1), reduction)


def listwise_kl(
    student_scores: torch.Tensor,
    teacher_scores: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Listwise ranking distillation: KL between the teacher's and the student's softmax over each query's
    candidates, ``KL(p_teacher || p_student)``, at temperature T and scaled by T².

    Formula, for each query ``q`` with candidate scores ``s_q`` (student) and ``t_q`` (teacher), ``[C]`` each::

        p_t = softmax(t_q / T),  p_s = softmax(s_q / T)
        T² · mean over counted queries of  Σ_c p_t[c] · (log p_t[c] − log p_s[c])

    This is `kl_div` with the candidates in the place of the vocabulary. Shapes: ``[B, C]`` both (any candidate
    order, the same for both models), ``mask`` ``[B]``. Scores are logits, so bring cosine scores to a useful
    range first (the objective's ``student_scale`` / ``teacher_scale``). A candidate the teacher gives ``-inf``
    (p = 0) contributes nothing. Listwise KD for rankers as in RocketQAv2 (Ren et al. 2021, arXiv:2110.07367)
    and Hinton et al. 2015 (arXiv:1503.02531) for the T².

    Example::

        >>> round(listwise_kl(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, math.log(3.0)]])).item(), 4)
        0.1308
    """
    if student_scores.dim() != 2:
        raise ValueError(f"scores must be [B, C] (one row of candidate scores per query), got "
                         f"{tuple(student_scores.shape)}.")
    return kl_div(student_scores, teacher_scores, temperature=temperature, mask=mask, reduction=reduction)


def _rows(values: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """Reduce per-row values: their mean, or their sum (the trainer's normalisation over items)."""
    _check_reduction(reduction)
    return _reduce(values, reduction)


def embedding_mse(student: torch.Tensor, teacher: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Mean squared error between embeddings: mean over all elements of ``(student − teacher)²``.

    Shapes: both ``[B, D]``. ``reduction="sum"`` sums the per-row means (``B`` × the mean). As
    sentence-transformers' MSELoss. Paper: Reimers & Gurevych 2020, "Making Monolingual Sentence Embeddings
    Multilingual using Knowledge Distillation", arXiv:2004.09813.

    Example::

        >>> embedding_mse(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 0.0]])).item()  # (0 + 4) / 2
        2.0
    """
    _check_same_shape(student, teacher)
    return _rows((student.float() - teacher.float()).pow(2).mean(dim=-1), reduction)


def embedding_cosine(student: torch.Tensor, teacher: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Cosine distance between embeddings: mean over rows of ``1 − cos(student_i, teacher_i)``.

    Shapes: both ``[B, D]``.

    Example::

        >>> embedding_cosine(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])).item()  # orthogonal
        1.0
    """
    _check_same_shape(student, teacher)
    return _rows(1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1), reduction)


def embedding_l2(student: torch.Tensor, teacher: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Euclidean distance between embeddings: mean over rows of ``||student_i − teacher_i||₂``.

    Shapes: both ``[B, D]``. The alignment loss of LEAF ("LEAF: Knowledge Distillation of Text Embedding Models
    with Teacher-Aligned Representations", 2025), whose students query an index built by the teacher.

    Example::

        >>> embedding_l2(torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 0.0]])).item()
        5.0
    """
    _check_same_shape(student, teacher)
    return _rows((student.float() - teacher.float()).norm(dim=-1), reduction)


def similarity_kd(student: torch.Tensor, teacher: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Relational distillation: mean over rows ``i`` of ``mean_j (cos(s_i, s_j) − cos(t_i, t_j))²``.

    ``student`` ``[B, d_s]`` and ``teacher`` ``[B, d_t]`` may have different widths: only the in-batch cosine
    similarity matrices are compared. Paper: Park et al. 2019, "Relational Knowledge Distillation",
    arXiv:1904.05068 (here with cosine similarities instead of distances).

    Example::

        >>> s = torch.tensor([[1.0, 0.0], [0.0, 1.0]]); t = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
        >>> similarity_kd(s, t).item()  # off-diagonal: cos 0 vs 1 → (0 + 1) / 2 per row
        0.5
    """
    if student.dim() != 2 or teacher.dim() != 2 or student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"student and teacher embeddings must be [B, d_s] and [B, d_t] with the same B, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}."
        )
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    return _rows((s @ s.T - t @ t.T).pow(2).mean(dim=-1), reduction)


def aligned_contrastive(student: torch.Tensor, teacher_positives: torch.Tensor, scale: float = 20.0,
                        reduction: Reduction = "mean") -> torch.Tensor:
    """Contrastive alignment into the teacher's space: row ``i``'s student embedding should find the teacher's
    embedding of its own positive among the teacher's embeddings of every row's positive.

    Formula, with cosine similarities and ``s = scale``::

        mean over rows i of  −log( exp(s · cos(student_i, teacher_i)) / Σ_j exp(s · cos(student_i, teacher_j)) )

    ``student`` ``[B, D]`` (e.g. the student's embeddings of queries) and ``teacher_positives`` ``[B, D]`` (the
    teacher's embeddings of each query's relevant passage); the other rows' positives are the negatives. This is
    sentence-transformers' MultipleNegativesRankingLoss (van den Oord et al. 2018, InfoNCE, arXiv:1807.03748) with
    the candidates encoded by the *teacher*: what a student whose queries search an index the teacher built
    (LEAF's setting) is evaluated on. ``scale`` 20 is sentence-transformers' default (a temperature of 0.05).

    Example::

        >>> s = torch.tensor([[1.0, 0.0], [0.0, 1.0]]); t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> round(aligned_contrastive(s, t, scale=1.0).item(), 4)  # −log(e / (e + 1)) per row
        0.3133
    """
    _check_same_shape(student, teacher_positives)
    if student.dim() != 2:
        raise ValueError(f"student and teacher embeddings must be [B, D], got {tuple(student.shape)}.")
    if not (isinstance(scale, (int, float)) and not isinstance(scale, bool) and 0 < scale < float("inf")):
        raise ValueError(f"`scale` must be a positive finite number, got {scale!r}.")
    logits = scale * F.normalize(student.float(), dim=-1) @ F.normalize(teacher_positives.float(), dim=-1).T
    targets = torch.arange(logits.shape[0], device=logits.device)
    return _rows(F.cross_entropy(logits, targets, reduction="none"), reduction)


def _labelled_rows(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checked ``[..., C]`` logits and ``[...]`` labels → the counted rows ``(student [N, C], teacher [N, C],
    labels [N])`` in float32. A row counts when its label is not ``-100`` and, if given, ``mask`` is True."""
    keep = _counted_labels(student_logits, labels, mask)
    student, teacher = _select(student_logits, teacher_logits, keep)
    targets = labels.reshape(-1)[keep.reshape(-1)].long()
    num_classes = student.shape[-1]
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
        raise ValueError(f"`labels` must be class ids in [0, {num_classes}) or -100, got values in "
                         f"[{int(targets.min())}, {int(targets.max())}].")
    return student, teacher, targets


def dkd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    mask: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Decoupled Knowledge Distillation: the classic KD split into a target-class and a non-target-class term,
    each with its own weight.

    Per counted position with label ``y`` and ``p = softmax(logits / T)`` over the ``C`` classes:

        b = (p(y), 1 − p(y))                                  the binary target / non-target distribution
        p̂(c) = p(c) / (1 − p(y)) = softmax(logits / T) over the classes c ≠ y only
        TCKD = KL(b_teacher || b_student)   = Σ_{i in {y, ¬y}} b_t(i) · (log b_t(i) − log b_s(i))
        NCKD = KL(p̂_teacher || p̂_student) = Σ_{c ≠ y} p̂_t(c) · (log p̂_t(c) − log p̂_s(c))
        loss = T² · (alpha · TCKD + beta · NCKD)

    then the mean (or sum) over counted positions. The classic KD is ``KL(p_t || p_s) = TCKD + (1 − p_t(y)) ·
    NCKD``; DKD frees NCKD from the ``1 − p_t(y)`` factor, which suppresses it exactly when the teacher is confident.
    ``log(1 − p(y))`` is computed as a log-sum-exp of the non-target log-probabilities (no ``log(1 − softmax)``).
    The paper's warm-up of the loss over the first epochs is a schedule, not part of this function.
    Paper: Zhao et al. 2022, "Decoupled Knowledge Distillation" (CVPR 2022), arXiv:2203.08679.

    Args:
        student_logits: ``[..., C]``, ``C >= 2``.
        teacher_logits: ``[..., C]``, same shape.
        labels: ``[...]`` integer class ids; ``-100`` = the position does not count.
        alpha: weight of TCKD (>= 0). beta: weight of NCKD (>= 0).
        temperature: T > 0. mask: ``[...]`` booleans, True = the position counts. reduction: ``"mean"`` or ``"sum"``.

    Example::

        >>> s = torch.tensor([[1.0, 0.0, 0.0]]); t = torch.tensor([[1.0, 2.0, 0.0]])
        >>> # NCKD only: p̂_s = (½, ½), p̂_t = softmax(2, 0) over classes 1, 2
        >>> round(dkd(s, t, torch.tensor([0]), alpha=0.0, beta=1.0, temperature=1.0).item(), 4)
        0.3278
    """
    _check_temperature(temperature)
    _check_reduction(reduction)
    for name, value in (("alpha", alpha), ("beta", beta)):
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
    if student_logits.shape[-1] < 2:
        raise ValueError(f"DKD needs at least 2 classes, got logits of shape {tuple(student_logits.shape)}.")
    student, teacher, targets = _labelled_rows(student_logits, teacher_logits, labels, mask)
    log_ps = F.log_softmax(_tempered(student, temperature), dim=-1)
    log_pt = F.log_softmax(_tempered(teacher, temperature), dim=-1)
    is_target = F.one_hot(targets, student.shape[-1]).to(torch.bool)

    def binary(log_p: torch.Tensor) -> torch.Tensor:  # [N, 2]: log p(y), log(1 − p(y))
        target = log_p.gather(-1, targets.unsqueeze(-1))
        others = torch.logsumexp(log_p.masked_fill(is_target, float("-inf")), dim=-1, keepdim=True)
        return torch.cat([target, others], dim=-1)

    def non_target(logits: torch.Tensor) -> torch.Tensor:  # [N, C]: log p̂, -inf at the target
        return F.log_softmax(_tempered(logits, temperature).masked_fill(is_target, float("-inf")), dim=-1)

    tckd = _kl_rows(binary(log_pt), binary(log_ps))
    nckd = _kl_rows(non_target(teacher), non_target(student))
    return _reduce(alpha * tckd + beta * nckd, reduction) * temperature**2


ADAPTIVE_RULES = ("confidence", "correctness")


def adaptive_kd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    rule: str = "confidence",
    mask: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """KD and CE mixed per sample by how far the teacher can be trusted on that sample.

    Per counted position with label ``y``:

        α = p_teacher(y)                           rule "confidence": the teacher's probability of the true label
                                                   at T = 1 (no gradient)
        α = 1 if argmax p_teacher = y, else 0      rule "correctness"
        loss = α · T² · KL(p_teacher^T || p_student^T) + (1 − α) · CE(student, y)

    with ``p^T = softmax(logits / T)`` and ``CE = −log softmax(student_logits)[y]`` (at T = 1); then the mean (or
    sum) over counted positions. Where the teacher is right and sure the student imitates it; where it is wrong or
    unsure the student learns from the label. The rule is ours: a closed-form stand-in for the sample-wise balance
    that Hu et al. learn with a small network from the student-teacher-label geometry ("Less or More From Teacher:
    Exploiting Trilateral Geometry for Knowledge Distillation", ICLR 2024, arXiv:2312.15112); weighting by the
    teacher's gold-label confidence follows CA-MKD (Zhang et al. 2022, "Confidence-Aware Multi-Teacher Knowledge
    Distillation", arXiv:2201.00007), which weighs teachers by it.

    Args:
        student_logits: ``[..., C]``. teacher_logits: ``[..., C]``, same shape.
        labels: ``[...]`` class ids; ``-100`` = the position does not count.
        temperature: T > 0 for the KL part. rule: ``"confidence"`` or ``"correctness"``.
        mask: ``[...]`` booleans, True = counts. reduction: ``"mean"`` or ``"sum"``.

    Example::

        >>> s = torch.tensor([[0.0, 0.0]]); t = torch.tensor([[0.0, 0.0]])  # α = ½, KL = 0, CE = log 2
        >>> round(adaptive_kd(s, t, torch.tensor([1])).item(), 4)
        0.3466
    """
    _check_temperature(temperature)
    _check_reduction(reduction)
    if rule not in ADAPTIVE_RULES:
        raise ValueError(f"`rule` must be one of {', '.join(ADAPTIVE_RULES)}, got {rule!r}.")
    student, teacher, targets = _labelled_rows(student_logits, teacher_logits, labels, mask)
    log_pt1 = F.log_softmax(teacher, dim=-1)
    if rule == "confidence":
        alpha = log_pt1.gather(-1, targets.unsqueeze(-1)).squeeze(-1).exp()
    else:
        alpha = (log_pt1.argmax(-1) == targets).float()
    alpha = alpha.detach()
    kd = _kl_rows(F.log_softmax(_tempered(teacher, temperature), dim=-1),
                  F.log_softmax(_tempered(student, temperature), dim=-1)) * temperature**2
    cross_entropy = -F.log_softmax(student, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return _reduce(alpha * kd + (1.0 - alpha) * cross_entropy, reduction)


def pld(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Plackett-Luce Distillation: a confidence-weighted list-wise ranking loss over the classes.

    Per counted position with label ``y``, student logits ``s`` and teacher logits ``t`` over ``C`` classes:

        π = (y, then the other classes in descending order of t)       the "teacher-optimal" ranking
        α_k = softmax(t / T)[π_k]                                      the teacher's probability of the k-th class
        loss = Σ_{k=1..C} α_k · ( log Σ_{l=k..C} exp(s[π_l]) − s[π_k] )

    then the mean (or sum) over counted positions. Each term is the Plackett-Luce negative log-likelihood of
    choosing ``π_k`` among the classes not yet ranked, so ``k = 1`` is ``α_1 · CE(s, y)``; the last term is 0. The
    loss only depends on differences of the student's logits (translation-invariant) and is convex in them.

    The exact version implemented here (stated because this is our reading of the paper): the weights are the
    teacher's softmax at temperature T evaluated at the class in each rank, *not* renormalised over the remaining
    classes and not multiplied by T²; the student's logits are used as they are (no temperature). Ties in the
    teacher's logits are broken by the lower class index.
    Paper: Bassam, Zhu & Bian 2025, "PLD: A Choice-Theoretic List-Wise Knowledge Distillation", arXiv:2506.12542.

    Args:
        student_logits, teacher_logits: ``[..., C]``.
        labels: ``[...]`` class ids, ``-100`` = the position does not count.
        temperature: T > 0, sharpens (T < 1) or flattens (T > 1) the teacher's weights.
        mask, reduction: as in :func:`kl_div`.

    Example::

        >>> s = torch.zeros(1, 3); t = torch.tensor([[0.0, 0.0, 0.0]])
        >>> round(pld(s, t, torch.tensor([0])).item(), 4)  # (log 3 + log 2 + 0) / 3
        0.5973
    """
    _check_temperature(temperature)
    _check_reduction(reduction)
    student, teacher, targets = _labelled_rows(student_logits, teacher_logits, labels, mask)
    # Ranking: the label first (its key is +inf), the other classes by descending teacher logit; a stable sort keeps
    # the lower index first on ties.
    keys = teacher.scatter(-1, targets.unsqueeze(-1), float("inf"))
    order = torch.sort(keys, dim=-1, descending=True, stable=True).indices
    weights = F.softmax(_tempered(teacher, temperature), dim=-1).gather(-1, order)
    ranked = student.gather(-1, order)
    # log Σ_{l >= k} exp(s[π_l]) for every k: a reversed cumulative log-sum-exp.
    tail_lse = torch.logcumsumexp(ranked.flip(-1), dim=-1).flip(-1)
    return _reduce((weights * (tail_lse - ranked)).sum(dim=-1), reduction)


def hidden_mse(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    mask: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Mean squared error between hidden states, token by token (FitNets / TinyBERT hidden-state distillation).

    Formula, per position ``i`` (a token of a sequence, a patch of an image) with states ``h_s, h_t`` of width H::

        mean over counted positions i of  (1/H) · Σ_d (h_s[i, d] − h_t[i, d])²

    i.e. the mean over counted positions and features. Project the student first when the widths differ (the
    ``hidden_mse`` objective learns that projection).
    Papers: Romero et al. 2015, "FitNets: Hints for Thin Deep Nets", arXiv:1412.6550; Jiao et al. 2020, "TinyBERT:
    Distilling BERT for Natural Language Understanding", arXiv:1909.10351.

    Args:
        student_hidden: ``[..., H]`` (e.g. ``[B, L, H]``).
        teacher_hidden: ``[..., H]``, same shape.
        mask: ``[...]`` booleans (e.g. ``[B, L]``), True = the position counts.
        reduction: ``"mean"`` over counted positions, or ``"sum"`` of their per-position means over features.

    Example::

        >>> hidden_mse(torch.tensor([[[1.0, 2.0], [0.0, 0.0]]]), torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])).item()
        1.0
    """
    _check_reduction(reduction)
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(
            f"student and teacher hidden states must have the same shape, got {tuple(student_hidden.shape)} and "
            f"{tuple(teacher_hidden.shape)}; when the widths differ, project the student first."
        )
    per_position = (student_hidden.float() - teacher_hidden.float()).pow(2).mean(dim=-1)
    return _masked_reduce(per_position, mask, reduction)


def _masked_reduce(per_position: torch.Tensor, mask: torch.Tensor | None, reduction: Reduction) -> torch.Tensor:
    """Mean (or sum) of ``per_position`` values over the positions where ``mask`` (same shape) is True."""
    if mask is None:
        return _reduce(per_position.reshape(-1), reduction)
    if mask.shape != per_position.shape:
        raise ValueError(f"`mask` must have shape {tuple(per_position.shape)}, got {tuple(mask.shape)}.")
    return _reduce(per_position[mask.to(torch.bool)], reduction)


def attention_kl(
    student_attn: torch.Tensor,
    teacher_attn: torch.Tensor,
    mask: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    eps: float = 1e-12,
) -> torch.Tensor:
    """KL divergence between attention distributions, row by row: ``KL(a_teacher || a_student)``.

    Each query position ``i`` of each head has an attention distribution ``a[i, :]`` over the keys (the softmax
    the model computed, as returned with ``output_attentions=True``). Formula::

        per query row:  (1/h) · Σ_heads Σ_j a_t[j] · (log a_t[j] − log a_s[j])
        loss = mean over counted query rows (batch × query positions)

    With different head counts (``h_s ≠ h_t``), each model's heads are first averaged into one distribution per
    row (still a distribution), then compared. Inputs are probabilities, not scores, so ``log a_s`` is taken of
    ``max(a_s, eps)``; a teacher probability of 0 (a masked key) contributes 0.
    Papers: Wang et al. 2020, "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
    Pre-Trained Transformers", arXiv:2002.10957 (KL of the last layer's attentions); TinyBERT (arXiv:1909.10351)
    distils attention matrices too.

    Args:
        student_attn: ``[B, h_s, Lq, Lk]``; teacher_attn: ``[B, h_t, Lq, Lk]``.
        mask: ``[B, Lq]`` booleans, True = the query row counts (e.g. not padding).
        reduction: ``"mean"`` over counted rows or ``"sum"``.

    Example::

        >>> a = torch.tensor([[[[0.5, 0.5]]]])
        >>> attention_kl(a, a).item()
        0.0
    """
    _check_reduction(reduction)
    if student_attn.dim() != 4 or teacher_attn.dim() != 4 or student_attn.shape[0] != teacher_attn.shape[0] or \
            student_attn.shape[2:] != teacher_attn.shape[2:]:
        raise ValueError(
            f"attentions must be [B, heads, Lq, Lk] with the same B, Lq and Lk, got {tuple(student_attn.shape)} and "
            f"{tuple(teacher_attn.shape)}."
        )
    student, teacher = student_attn.float(), teacher_attn.float()
    if student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(dim=1, keepdim=True), teacher.mean(dim=1, keepdim=True)
    per_row = (torch.xlogy(teacher, teacher) - teacher * student.clamp_min(eps).log()).sum(dim=-1).mean(dim=1)
    return _masked_reduce(per_row, mask, reduction)


def __getattr__(name: str) -> object:
    """`losses.chunked_divergence` and `losses.fused_linear_divergence` (defined in `hf_distill.chunked_losses`,
    which builds on this module, hence loaded on first use):
    memory-efficient variants of the divergences above, chunked over positions, optionally fused with the LM head."""
    if name in ("chunked_divergence", "fused_linear_divergence"):
        from . import chunked_losses

        return getattr(chunked_losses, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
