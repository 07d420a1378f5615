"""Memory-efficient distillation divergences for large vocabularies: chunked over rows, gradient in the forward.

The dense functions of :mod:`hf_distill.losses` build several float32 ``[N, V]`` tensors (tempered logits,
log-softmaxes, probabilities, log-ratios, products) for the N counted positions and keep most of them in the
autograd graph until the backward pass. With a vocabulary of 128k tokens, 8k tokens per batch cost 4 GiB per such
tensor. The two functions here give the same values and gradients but only ever hold a ``chunk_size``-row slice of
those intermediates:

* :func:`chunked_divergence` takes logits, as the dense functions do. Each chunk of counted rows is upcast to
  float32, its divergence computed, and the closed-form gradient with respect to that chunk's student logits
  written into one gradient buffer (``[..., V]``, in the student logits' dtype); the chunk's intermediates are
  then freed. No autograd graph is built over the intermediates: backward only scales the stored gradient.
* :func:`fused_linear_divergence` starts one step earlier, from the hidden states and the LM-head weights of both
  models, so that not even the logits exist for the whole batch: each chunk's logits are computed, used and
  dropped, and the gradients of the student's hidden states, weight and bias are accumulated chunk by chunk.

The idea of fusing the LM head with the distillation loss and computing gradients chunk by chunk inside the forward
pass comes from Liger-Kernel's fused linear distillation losses (LinkedIn, "Liger Kernel: Efficient Triton Kernels
for LLM Training", arXiv:2410.10989); this is an independent pure-PyTorch implementation of that idea.

Conventions (formulas, ``mask``, ``reduction``, temperature and T², float32 maths, zero probabilities, the JSD end
points) are exactly those of :mod:`hf_distill.losses`; the per-row maths is the same code (``_kl_rows``).

Closed-form gradients. With ``a = z_s / T`` (student logits over T), ``p_s = softmax(a)`` and ``D`` the per-row
divergence, the loss per row is ``T² · D`` so ``∂loss/∂z_s = T · ∂D/∂a``, and per row:

* forward KL, ``D = KL(p_t || p_s)``:            ``∂D/∂a = p_s − p_t``
* reverse KL, ``D = KL(p_s || p_t)``:            ``∂D/∂a = p_s ⊙ (log p_s − log p_t − D)``
* JSD(β), ``m = β·p_t + (1 − β)·p_s``:          ``∂D/∂a = (1 − β) · p_s ⊙ (log p_s − log m − KL(p_s || m))``

(for the JSD, the terms coming from ``∂m/∂a`` cancel because ``Σ_v (β·p_t + (1 − β)·p_s)_v / m_v · ∂p_s,v/∂a =
Σ_v ∂p_s,v/∂a = 0``). Terms where ``p_s = 0`` are 0, as in the values. With ``reduction="mean"`` every row's
gradient is further divided by the number of counted rows.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from .losses import (
    Reduction,
    _check_reduction,
    _check_temperature,
    _check_topk_support,
    _kl_rows,
    _reduce,
    _tempered,
    _tempered_log_probs,
    _topk_teacher_log_probs,
)

__all__ = ["chunked_divergence", "fused_linear_divergence", "divergence_ce", "topk_divergence_ce",
           "fused_linear_divergence_ce", "JointLoss"]

Divergence = Literal["kl", "reverse_kl", "jsd"]
_DIVERGENCES = ("kl", "reverse_kl", "jsd")


# ----------------------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------------------


def _check_options(divergence: str, beta: float, temperature: float, reduction: str, chunk_size: int) -> str:
    """Check the scalar options; return the divergence actually computed (JSD's end points are KL / reverse KL)."""
    if divergence not in _DIVERGENCES:
        raise ValueError(f"`divergence` must be one of 'kl', 'reverse_kl' or 'jsd', got {divergence!r}.")
    if divergence == "jsd" and (isinstance(beta, bool) or not (isinstance(beta, (int, float)) and 0.0 <= beta <= 1.0)):
        raise ValueError(f"`beta` must be in [0, 1], got {beta!r}.")
    _check_temperature(temperature)
    _check_reduction(reduction)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size <= 0:
        raise ValueError(f"`chunk_size` must be a positive int (rows per chunk), got {chunk_size!r}.")
    if divergence == "jsd" and beta == 0.0:
        return "kl"  # as jsd(): β = 0 is the forward KL(p_t || p_s) ...
    if divergence == "jsd" and beta == 1.0:
        return "reverse_kl"  # ... and β = 1 the reverse KL(p_s || p_t)
    return divergence


def _counted_rows(leading_shape: torch.Size, mask: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """Indices of the counted rows of the flattened leading dimensions; ``None`` when every row counts (chunks are
    then slices: views of the inputs and of the gradient buffer, instead of gathered copies and scattered writes)."""
    if mask is None:
        return None
    if mask.shape != leading_shape:
        raise ValueError(
            f"`mask` must have shape {tuple(leading_shape)} (the inputs without their last dimension), got "
            f"{tuple(mask.shape)}."
        )
    keep = mask.reshape(-1).to(device=device, dtype=torch.bool)
    return None if bool(keep.all()) else keep.nonzero().squeeze(1)


def _chunks(
    num_rows: int, rows: torch.Tensor | None, chunk_size: int, segment: int | None = None,
) -> Iterator[tuple[int, int, slice | torch.Tensor]]:
    """``(start, stop, selector)`` per chunk: positions ``start:stop`` among the counted rows and the selector of
    those rows in the flattened input (a slice, hence a view, when every row counts). With ``segment``, slices
    also end at multiples of it, so that each stays inside one sequence (see `_row_reader`)."""
    count = num_rows if rows is None else rows.numel()
    start = 0
    while start < count:
        stop = min(start + chunk_size, count)
        if rows is None and segment:
            stop = min(stop, (start // segment + 1) * segment)
        yield start, stop, slice(start, stop) if rows is None else rows[start:stop]
        start = stop


# ----------------------------------------------------------------------------------------------------------------
# One chunk: values and closed-form gradient
# ----------------------------------------------------------------------------------------------------------------


def _chunk_rows_and_grad(
    log_ps: torch.Tensor, log_pt: torch.Tensor, divergence: str, beta: float, grad_scale: float | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A chunk's float32 log-probabilities ``[c, V]`` at temperature T (``_tempered_log_probs``, which the callers
    run so that the chunk's logits can be freed first) → per-row divergence ``D`` ``[c]`` (no T²) and, unless
    ``grad_scale`` is None, ``grad_scale · ∂D/∂(z_s / T)`` ``[c, V]``. Formulas in the module docstring. May
    overwrite ``log_ps`` and ``log_pt`` (the callers drop them)."""
    if divergence == "kl":
        rows = _kl_rows(log_pt, log_ps)
        if grad_scale is None:
            return rows, None
        return rows, log_ps.exp_().sub_(log_pt.exp_()).mul_(grad_scale)  # p_s − p_t (log_ps, log_pt reused)
    if divergence == "reverse_kl":
        log_q = log_pt
        rows = kl_student = _kl_rows(log_ps, log_pt)
        weight = 1.0
    else:  # jsd, 0 < β < 1; log m without leaving log space, as in jsd()
        log_q = torch.logaddexp(log_pt + math.log(beta), log_ps + math.log(1.0 - beta))
        kl_student = _kl_rows(log_ps, log_q)
        rows = beta * _kl_rows(log_pt, log_q) + (1.0 - beta) * kl_student
        weight = 1.0 - beta
    if grad_scale is None:
        return rows, None
    p_s = log_ps.exp()
    # p_s ⊙ (log p_s − log q − KL(p_s || q)), with the log-ratio zeroed where p_s = 0 (−inf − −inf would be NaN).
    grad = log_ps.sub_(log_q).masked_fill_(p_s == 0, 0.0).sub_(kl_student.unsqueeze(-1)).mul_(p_s)
    return rows, grad.mul_(weight * grad_scale)


def _grad_scale(temperature: float, reduction: str, count: int) -> float:
    """The factor that turns ∂D/∂a (a = z_s / T) into ∂loss/∂z_s: T² (the loss scale) · 1/T (∂a/∂z_s), divided by
    the number of counted rows for the mean."""
    return temperature / count if reduction == "mean" and count else temperature


def _scaled(grad: torch.Tensor | None, grad_output: torch.Tensor) -> torch.Tensor | None:
    """The stored gradient times ``grad_output`` (the tensor itself when ``grad_output`` is 1: no full-size copy)."""
    if grad is None or bool(grad_output == 1):
        return grad
    return grad * grad_output


# ----------------------------------------------------------------------------------------------------------------
# chunked_divergence
# ----------------------------------------------------------------------------------------------------------------


class _ChunkedDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student_logits, teacher_logits, rows, divergence, beta, temperature, reduction, chunk_size):
        vocab = student_logits.shape[-1]
        student = student_logits.reshape(-1, vocab)  # views for contiguous inputs
        teacher = teacher_logits.reshape(-1, vocab)
        count = student.shape[0] if rows is None else rows.numel()
        scale = _grad_scale(temperature, reduction, count) if ctx.needs_input_grad[0] else None
        # The one full-size tensor: the gradient, in the student logits' dtype; rows not counted stay 0.
        grad = None if scale is None else student.new_zeros(student.shape)
        per_row = student.new_zeros(count, dtype=torch.float32)
        for start, stop, sel in _chunks(student.shape[0], rows, chunk_size):
            log_ps, log_pt = _tempered_log_probs(student[sel], teacher[sel], temperature, None, reduction)
            per_row[start:stop], chunk_grad = _chunk_rows_and_grad(log_ps, log_pt, divergence, beta, scale)
            del log_ps, log_pt
            if grad is not None:
                grad[sel] = chunk_grad.to(grad.dtype)
            del chunk_grad
        ctx.save_for_backward(None if grad is None else grad.view(student_logits.shape))
        return _reduce(per_row, reduction) * temperature**2

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return _scaled(grad, grad_output), None, None, None, None, None, None, None


def chunked_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    divergence: Divergence = "kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    chunk_size: int = 1024,
) -> torch.Tensor:
    """A distillation divergence computed ``chunk_size`` rows at a time, with its gradient computed in the forward.

    Same value and same gradient with respect to ``student_logits`` as the dense functions of
    :mod:`hf_distill.losses`; with ``p = softmax(logits / T)`` per position:

    * ``"kl"`` (:func:`~hf_distill.losses.kl_div`), forward KL(p_teacher || p_student):
      T² · mean over counted positions of  sum_v p_t(v) · (log p_t(v) − log p_s(v))
    * ``"reverse_kl"`` (:func:`~hf_distill.losses.reverse_kl`), reverse KL(p_student || p_teacher):
      T² · mean over counted positions of  sum_v p_s(v) · (log p_s(v) − log p_t(v))
    * ``"jsd"`` (:func:`~hf_distill.losses.jsd`), with the mixture m = β·p_t + (1 − β)·p_s:
      T² · mean over counted positions of  β · KL(p_t || m) + (1 − β) · KL(p_s || m);
      β = 0 is exactly ``"kl"`` and β = 1 exactly ``"reverse_kl"``.

    ``reduction="sum"`` sums over counted positions instead of averaging; no counted position gives 0 (and a zero
    gradient). The teacher gets no gradient, whether or not ``teacher_logits`` requires one.

    Memory: the counted rows are processed ``chunk_size`` at a time: each chunk is upcast to float32, its
    divergence and the closed-form gradient with respect to its student logits (module docstring) are computed,
    the gradient is written into a buffer of the shape and dtype of ``student_logits``, and the chunk's float32
    intermediates are freed. So the float32 intermediates are ``[chunk_size, V]``, not ``[N, V]``, and no autograd
    graph is kept over them; the gradient buffer is the only full-size tensor (none when ``student_logits`` does
    not require grad). Backward multiplies it by the incoming gradient. The inputs themselves are the caller's; to
    avoid full-size logits altogether, see :func:`fused_linear_divergence`. Compute grows by the cost of the
    gradient formula only (there is no separate backward over the vocabulary).

    Args:
        student_logits: ``[..., V]``, any float dtype (maths in float32, gradient in this dtype).
        teacher_logits: ``[..., V]``, same shape.
        divergence: ``"kl"``, ``"reverse_kl"`` or ``"jsd"``.
        beta: β in [0, 1], the teacher's share of the JSD mixture (used by ``"jsd"`` only).
        temperature: T > 0.
        mask: ``[...]`` booleans, True = the position counts.
        reduction: ``"mean"`` over counted positions or ``"sum"``.
        chunk_size: positive int, counted rows per chunk; peak extra memory grows with ``chunk_size · V``.

    Example::

        >>> from hf_distill.losses import kl_div
        >>> s = torch.randn(2, 5, 11, requires_grad=True)
        >>> t = torch.randn(2, 5, 11)
        >>> loss = chunked_divergence(s, t, "kl", temperature=2.0, chunk_size=3)
        >>> torch.allclose(loss, kl_div(s, t, temperature=2.0))
        True
        >>> loss.backward()  # s.grad == T · (p_s − p_t) / 10 per position
    """
    divergence = _check_options(divergence, beta, temperature, reduction, chunk_size)
    if student_logits.dim() == 0 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits must have the same shape [..., V], got {tuple(student_logits.shape)} and "
            f"{tuple(teacher_logits.shape)}. If the teacher's vocabulary is padded beyond the student's, slice the "
            "teacher logits to the student's vocabulary first."
        )
    rows = _counted_rows(student_logits.shape[:-1], mask, student_logits.device)
    return _ChunkedDivergence.apply(
        student_logits, teacher_logits.detach(), rows, divergence, beta, temperature, reduction, int(chunk_size)
    )


# ----------------------------------------------------------------------------------------------------------------
# fused_linear_divergence
# ----------------------------------------------------------------------------------------------------------------


class _FusedLinearDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, rows, divergence, beta, temperature,
                reduction, chunk_size):
        hs = s_hidden.reshape(-1, s_hidden.shape[-1])
        ht = t_hidden.reshape(-1, t_hidden.shape[-1])
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        count = hs.shape[0] if rows is None else rows.numel()
        scale = _grad_scale(temperature, reduction, count) if (need_h or need_w or need_b) else None
        grad_h = hs.new_zeros(hs.shape) if need_h else None
        # Weight and bias gradients are sums over all chunks: accumulated in float32, cast once at the end.
        grad_w = s_weight.new_zeros(s_weight.shape, dtype=torch.float32) if need_w else None
        grad_b = s_bias.new_zeros(s_bias.shape, dtype=torch.float32) if need_b else None
        per_row = hs.new_zeros(count, dtype=torch.float32)
        for start, stop, sel in _chunks(hs.shape[0], rows, chunk_size):
            h = hs[sel]
            log_ps, log_pt = _tempered_log_probs(
                F.linear(h, s_weight, s_bias), F.linear(ht[sel], t_weight, t_bias), temperature, None, reduction
            )  # the chunk's logits are freed once their log-softmaxes exist
            per_row[start:stop], grad_logits = _chunk_rows_and_grad(log_ps, log_pt, divergence, beta, scale)
            del log_ps, log_pt
            # logits = h @ W.T + b  ⇒  ∂/∂h = g @ W,  ∂/∂W = g.T @ h,  ∂/∂b = Σ_rows g.
            if grad_h is not None:
                grad_h[sel] = grad_logits.to(s_weight.dtype) @ s_weight
            if grad_w is not None:
                grad_w.addmm_(grad_logits.T, h.float())
            if grad_b is not None:
                grad_b.add_(grad_logits.sum(dim=0))
            del grad_logits
        ctx.save_for_backward(
            None if grad_h is None else grad_h.view(s_hidden.shape),
            None if grad_w is None else grad_w.to(s_weight.dtype),
            None if grad_b is None else grad_b.to(s_bias.dtype),
        )
        return _reduce(per_row, reduction) * temperature**2

    @staticmethod
    def backward(ctx, grad_output):
        grad_h, grad_w, grad_b = (_scaled(g, grad_output) for g in ctx.saved_tensors)
        return grad_h, grad_w, grad_b, None, None, None, None, None, None, None, None, None


def _check_head(name: str, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if hidden.dim() == 0:
        raise ValueError(f"`{name}_hidden` must have shape [..., H], got a scalar.")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"`{name}_weight` must have shape [V, H] with H = {hidden.shape[-1]} (the last dimension of "
            f"`{name}_hidden`), got {tuple(weight.shape)}."
        )
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"`{name}_bias` must have shape ({weight.shape[0]},) (V), got {tuple(bias.shape)}.")


def fused_linear_divergence(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    divergence: Divergence = "kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    chunk_size: int = 1024,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """LM head and distillation divergence fused: the ``[N, V]`` logits never exist for the whole batch.

    Equal, in value and gradients, to::

        chunked_divergence(student_hidden @ student_weight.T + student_bias,
                           teacher_hidden @ teacher_weight.T + teacher_bias, divergence, beta, ...)

    i.e. to the dense :func:`~hf_distill.losses.kl_div` (forward KL(p_teacher || p_student)),
    :func:`~hf_distill.losses.reverse_kl` (KL(p_student || p_teacher)) or :func:`~hf_distill.losses.jsd`
    (β · KL(p_t || m) + (1 − β) · KL(p_s || m), m = β·p_t + (1 − β)·p_s; β = 0 is ``"kl"``, β = 1
    ``"reverse_kl"``) on those logits, with p = softmax(logits / T), times T², averaged (``"mean"``) or summed
    (``"sum"``) over the counted positions; no counted position gives 0 and zero gradients.

    Memory: for each chunk of ``chunk_size`` counted rows, both models' logits are computed (in the hiddens' dtype,
    as the model would), upcast to float32, the divergence and its closed-form gradient ``g`` with respect to the
    student logits computed (see :mod:`hf_distill.chunked_losses`), then ``g @ W_s`` is written into the hidden-state
    gradient and ``g.T @ h_s`` (and ``Σ g``) added to the weight (and bias) gradients, accumulated in float32;
    the chunk's logits and intermediates are then freed. Full-size tensors are only the gradients themselves:
    ``[..., H_s]``, ``[V, H_s]`` (float32 while accumulating, plus a copy in the weight's dtype if that is not
    float32) and ``[V]``. The gradients are computed in the forward pass, so the forward costs about as much as a
    forward + backward; backward only scales them by the incoming gradient. Gradients flow to ``student_hidden``,
    ``student_weight`` and ``student_bias`` (those that require grad); teacher tensors get none.

    Args:
        student_hidden: ``[..., H_s]`` final hidden states of the student (same dtype as ``student_weight``).
        student_weight: ``[V, H_s]`` student LM head (``nn.Linear(H_s, V).weight``).
        teacher_hidden: ``[..., H_t]``, the same leading shape as ``student_hidden``.
        teacher_weight: ``[V, H_t]`` teacher LM head, the same V (slice a padded teacher vocabulary first).
        divergence, beta, temperature, mask, reduction, chunk_size: as in :func:`chunked_divergence`.
        student_bias, teacher_bias: optional ``[V]`` LM-head biases.

    Example::

        >>> from hf_distill.losses import kl_div
        >>> hs, ws = torch.randn(2, 5, 8, requires_grad=True), torch.randn(11, 8, requires_grad=True)
        >>> ht, wt = torch.randn(2, 5, 16), torch.randn(11, 16)
        >>> loss = fused_linear_divergence(hs, ws, ht, wt, "kl", temperature=2.0, chunk_size=4)
        >>> torch.allclose(loss, kl_div(hs @ ws.T, ht @ wt.T, temperature=2.0))
        True
        >>> loss.backward()  # hs.grad and ws.grad as if through the full logits
    """
    divergence = _check_options(divergence, beta, temperature, reduction, chunk_size)
    _check_head("student", student_hidden, student_weight, student_bias)
    _check_head("teacher", teacher_hidden, teacher_weight, teacher_bias)
    if student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
        raise ValueError(
            f"`student_hidden` and `teacher_hidden` must have the same leading shape [...], got "
            f"{tuple(student_hidden.shape)} and {tuple(teacher_hidden.shape)}."
        )
    if student_weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError(
            f"student and teacher LM heads must have the same vocabulary size V, got `student_weight` "
            f"{tuple(student_weight.shape)} and `teacher_weight` {tuple(teacher_weight.shape)}. If the teacher's "
            "vocabulary is padded beyond the student's, slice it first (teacher_weight[:V], teacher_bias[:V])."
        )
    rows = _counted_rows(student_hidden.shape[:-1], mask, student_hidden.device)
    return _FusedLinearDivergence.apply(
        student_hidden, student_weight, student_bias, teacher_hidden.detach(), teacher_weight.detach(),
        None if teacher_bias is None else teacher_bias.detach(), rows, divergence, beta, temperature, reduction,
        int(chunk_size),
    )


# ----------------------------------------------------------------------------------------------------------------
# A divergence and the cross-entropy with the labels, in one pass over the student's logits
# ----------------------------------------------------------------------------------------------------------------


class JointLoss(NamedTuple):
    """What :func:`divergence_ce` and :func:`fused_linear_divergence_ce` return: ``total`` =
    ``divergence_weight · divergence + ce_weight · ce`` carries the gradient; the two parts are detached, for
    logging."""

    total: torch.Tensor
    divergence: torch.Tensor
    ce: torch.Tensor


def _joint_chunk(
    z_s: torch.Tensor,
    z_t: torch.Tensor | None,
    targets: torch.Tensor,
    divergence: str,
    beta: float,
    temperature: float,
    div_scale: float | None,
    ce_scale: float | None,
    need_grad: bool,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """One chunk: float32 student logits ``[c, V]``, teacher logits ``[c, V]`` (None: no divergence) and label ids
    ``[c]`` (``-100``: no cross-entropy on that row) → per-row divergence ``D`` (no T²) or None, per-row CE (0 on
    unlabelled rows) and, with ``need_grad``, ``∂(div_scale · D + ce_scale · CE)/∂z_s`` ``[c, V]``. ``ce_scale``
    None: no row of the whole input has a label, so no CE is computed.

    The student's log-softmax at T = 1 serves both the CE and, at T = 1, the divergence (computed once); at
    T ≠ 1 the divergence needs ``log_softmax(z_s / T)``, a different tensor, computed separately. CE gradient per
    labelled row: ``softmax(z_s) − onehot(label)``."""
    if isinstance(z_t, tuple):
        return _topk_joint_chunk(z_s, z_t, targets, divergence, beta, temperature, div_scale, ce_scale, need_grad)
    labelled = targets != -100
    index = targets.clamp_min(0).unsqueeze(-1)
    if ce_scale is None and z_t is not None:  # no labelled row in the whole input: the divergence alone
        log_ps, log_pt = _tempered_log_probs(z_s, z_t, temperature, None, "sum")
        div_rows, grad = _chunk_rows_and_grad(log_ps, log_pt, divergence, beta,
                                              (div_scale or 0.0) if need_grad else None)
        return div_rows, torch.zeros_like(div_rows), grad
    log_p1 = F.log_softmax(z_s, dim=-1)
    ce_rows = torch.where(labelled, -log_p1.gather(-1, index).squeeze(-1), 0.0)
    row_ce = labelled.float() * ce_scale if need_grad and ce_scale else None  # per-row CE gradient scale
    if z_t is None:
        if not need_grad:
            return None, ce_rows, None
        if row_ce is None:  # no teacher and no labelled row in the whole input: the loss is 0
            return None, ce_rows, torch.zeros_like(z_s)
        grad = log_p1.exp_().mul_(row_ce.unsqueeze(-1))
        return None, ce_rows, grad.scatter_add_(-1, index, -row_ce.unsqueeze(-1))
    shared = temperature == 1
    log_ps = log_p1 if shared else F.log_softmax(z_s / temperature, dim=-1)
    log_pt = F.log_softmax(_tempered(z_t, temperature), dim=-1)
    if divergence == "kl" and shared:
        # One pass for both: Σ p_t (log p_t − log p_s), then p_s scaled by (div_scale + ce_scale) minus
        # div_scale · p_t, minus ce_scale at each label.
        p_t = log_pt.exp()
        div_rows = (p_t * log_pt.sub_(log_ps).masked_fill_(p_t == 0, 0.0)).sum(dim=-1)
        if not need_grad:
            return div_rows, ce_rows, None
        scale = torch.full_like(ce_rows, div_scale or 0.0)
        if row_ce is not None:
            scale = scale + row_ce
        grad = log_ps.exp_().mul_(scale.unsqueeze(-1)).sub_(p_t.mul_(div_scale or 0.0))
    else:
        p1 = log_p1.exp() if row_ce is not None else None  # before `_chunk_rows_and_grad` overwrites log_ps
        div_rows, grad = _chunk_rows_and_grad(log_ps, log_pt, divergence, beta,
                                              (div_scale or 0.0) if need_grad else None)
        if grad is None:
            return div_rows, ce_rows, None
        if p1 is not None:
            grad.add_(p1.mul_(row_ce.unsqueeze(-1)))
    if row_ce is not None:
        grad.scatter_add_(-1, index, -row_ce.unsqueeze(-1))
    return div_rows, ce_rows, grad


def _topk_joint_chunk(
    z_s: torch.Tensor,
    support: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    targets: torch.Tensor,
    divergence: str,
    beta: float,
    temperature: float,
    div_scale: float | None,
    ce_scale: float | None,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """`_joint_chunk` for a teacher known by its top-k support: ``support`` = float32 top-k logits ``[c, k]``, their
    int64 indices ``[c, k]`` and the float32 tail mass ``[c]`` (`losses.topk_divergence`'s k + 1 buckets).

    The divergence is that of the bucket distributions; its gradient comes from the buckets through the chain rule.
    A bucket's log-probability is a log-softmax of bucket logits ``u_b = logsumexp_{v in b} a_v`` (a = z_s / T), so
    with ``h = ∂D/∂u`` (`_chunk_rows_and_grad` on the ``[c, k + 1]`` buckets, cheap) and ``∂u_b/∂a_v =
    [v in b] · p_s(v) / p_s(b)``: a top-k token's gradient is its bucket's ``h``, a tail token's is ``h_tail ·
    p_s(v) / p_s(tail)``. The student's log-softmax at T = 1 also serves the CE (and, at T = 1, the buckets)."""
    values, indices, tail = support
    labelled = targets != -100
    index = targets.clamp_min(0).unsqueeze(-1)
    log_p1 = F.log_softmax(z_s, dim=-1)
    ce_rows = torch.where(labelled, -log_p1.gather(-1, index).squeeze(-1), 0.0)
    log_ps = log_p1 if temperature == 1 else F.log_softmax(z_s / temperature, dim=-1)
    vocab, k = z_s.shape[-1], indices.shape[-1]
    buckets = log_ps.gather(-1, indices)
    in_tail = None
    if k < vocab:  # the tail: log Σ_{v outside top-k} p_s(v), then p_s(v) / p_s(tail) for its tokens (0 on top-k)
        in_tail = log_ps.scatter(-1, indices, float("-inf"))
        log_tail = torch.logsumexp(in_tail, dim=-1, keepdim=True)
        buckets = torch.cat([buckets, log_tail], dim=-1)
        in_tail = in_tail.sub_(log_tail.clamp_min(torch.finfo(log_tail.dtype).min)).exp_() if need_grad else None
    log_pt = _topk_teacher_log_probs(values, tail, vocab, temperature)
    row_ce = labelled.float() * ce_scale if need_grad and ce_scale else None  # per-row CE gradient scale
    div_rows, h = _chunk_rows_and_grad(buckets, log_pt, divergence, beta, (div_scale or 0.0) if need_grad else None)
    if h is None:
        return div_rows, ce_rows, None
    grad = in_tail.mul_(h[:, k:]) if in_tail is not None else torch.zeros_like(z_s)
    grad.scatter_(-1, indices, h[:, :k])
    if row_ce is not None:  # + ce_scale · (softmax(z_s) − onehot(label)) on labelled rows
        grad.add_(log_p1.exp_().mul_(row_ce.unsqueeze(-1))).scatter_add_(-1, index, -row_ce.unsqueeze(-1))
    return div_rows, ce_rows, grad


def _joint_scales(divergence_weight: float, ce_weight: float, temperature: float, reduction: str, count: int,
                  labelled: int) -> tuple[float, float]:
    """Gradient scales of the divergence (see `_grad_scale`) and of the CE, each weighted."""
    ce_scale = ce_weight / labelled if reduction == "mean" and labelled else ce_weight
    return divergence_weight * _grad_scale(temperature, reduction, count), ce_scale


def _joint_values(div_rows: torch.Tensor | None, ce_rows: torch.Tensor, labelled: int, divergence_weight: float,
                  ce_weight: float, temperature: float, reduction: str) -> tuple[torch.Tensor, ...]:
    div = ce_rows.new_zeros(()) if div_rows is None else _reduce(div_rows, reduction) * temperature**2
    ce = ce_rows.sum()
    if reduction == "mean" and labelled:
        ce = ce / labelled
    return divergence_weight * div + ce_weight * ce, div, ce


def _joint_targets(labels: torch.Tensor, leading_shape: torch.Size, vocab: int) -> torch.Tensor:
    if labels.shape != leading_shape:
        raise ValueError(f"`labels` must have shape {tuple(leading_shape)} (the inputs without their last dimension), "
                         f"got {tuple(labels.shape)}.")
    targets = labels.reshape(-1).long()
    valid = targets[targets != -100]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= vocab):
        raise ValueError(f"`labels` must be token ids in [0, {vocab}) or -100, got values in [{int(valid.min())}, "
                         f"{int(valid.max())}].")
    return targets


def _row_reader(tensor: torch.Tensor) -> Callable[[slice | torch.Tensor], torch.Tensor]:
    """``selector -> [c, V]`` rows of ``tensor [..., V]`` by flat row number, without first copying the whole tensor
    when it cannot be viewed as ``[N, V]`` (e.g. a causal LM's shifted ``logits[:, :-1]``): a slice inside one
    sequence is then a view (`_segment` makes the chunks so), anything else a gathered copy of its rows."""
    try:
        flat = tensor.view(-1, tensor.shape[-1])
    except RuntimeError:
        leading = tensor.shape[:-1]
        segment = _segment(tensor)
        sequences = tensor.view(-1, segment, tensor.shape[-1]) if segment else None

        def read(sel: slice | torch.Tensor) -> torch.Tensor:
            if isinstance(sel, slice):
                if sequences is not None and sel.start // segment == (sel.stop - 1) // segment:
                    first = sel.start % segment
                    return sequences[sel.start // segment, first:first + sel.stop - sel.start]
                sel = torch.arange(sel.start, sel.stop, device=tensor.device)
            return tensor[torch.unravel_index(sel, leading)]

        return read
    return flat.__getitem__


def _segment(tensor: torch.Tensor) -> int | None:
    """The rows per sequence when ``tensor [..., L, V]`` cannot be viewed as ``[N, V]`` but can as ``[M, L, V]``
    (a causal LM's ``logits[:, :-1]``): chunks that end at multiples of L are views. None otherwise."""
    if tensor.dim() < 3:
        return None
    try:
        tensor.view(-1, tensor.shape[-1])
        return None
    except RuntimeError:
        pass
    try:
        tensor.view(-1, tensor.shape[-2], tensor.shape[-1])
    except RuntimeError:
        return None
    return tensor.shape[-2] or None


def _teacher_reader(
    teacher: torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
) -> Callable[[slice | torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...] | None]:
    """``selector -> `` a chunk of the teacher as `_joint_chunk` takes it: float32 logits ``[c, V]``, or for a top-k
    support ``(logits [..., k], indices [..., k], tail mass [...])`` the float32 / int64 / float32 rows; None for
    no teacher."""
    if teacher is None:
        return lambda sel: None
    if isinstance(teacher, torch.Tensor):
        read = _row_reader(teacher)
        return lambda sel: read(sel).float()
    values, indices, tail = _row_reader(teacher[0]), _row_reader(teacher[1]), teacher[2].reshape(-1)
    return lambda sel: (values(sel).float(), indices(sel).long(), tail[sel].float())


class _DivergenceCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student_logits, teacher_logits, targets, rows, divergence, beta, temperature, reduction,
                chunk_size, divergence_weight, ce_weight):
        vocab = student_logits.shape[-1]
        num_rows = student_logits.numel() // vocab if vocab else 0
        student = _row_reader(student_logits)
        teacher = _teacher_reader(teacher_logits)
        count = num_rows if rows is None else rows.numel()
        selected = targets if rows is None else targets[rows]
        labelled = int((selected != -100).sum())
        div_scale, ce_scale = _joint_scales(divergence_weight, ce_weight, temperature, reduction, count, labelled)
        ce_scale = ce_scale if labelled else None
        need_grad = ctx.needs_input_grad[0]
        # Every row is written when every row counts; otherwise the uncounted rows' gradient is 0.
        grad = (student_logits.new_empty if rows is None else student_logits.new_zeros)(num_rows, vocab) \
            if need_grad else None
        div_rows = None if teacher_logits is None else student_logits.new_zeros(count, dtype=torch.float32)
        ce_rows = student_logits.new_zeros(count, dtype=torch.float32)
        segment = _segment(student_logits) or (_segment(teacher_logits)
                                               if isinstance(teacher_logits, torch.Tensor) else None)
        for start, stop, sel in _chunks(num_rows, rows, chunk_size, segment):
            d, c, g = _joint_chunk(student(sel).float(), teacher(sel), targets[sel], divergence, beta, temperature,
                                   div_scale, ce_scale, need_grad)
            if d is not None:
                div_rows[start:stop] = d
            ce_rows[start:stop] = c
            if g is not None:
                grad[sel] = g.to(grad.dtype)
            del d, c, g
        ctx.save_for_backward(None if grad is None else grad.view(student_logits.shape))
        total, div, ce = _joint_values(div_rows, ce_rows, labelled, divergence_weight, ce_weight, temperature,
                                       reduction)
        ctx.mark_non_differentiable(div, ce)
        return total, div, ce

    @staticmethod
    def backward(ctx, grad_total, grad_div, grad_ce):
        (grad,) = ctx.saved_tensors
        return (_scaled(grad, grad_total),) + (None,) * 10


def _check_weights(divergence_weight: float, ce_weight: float) -> None:
    for name, value in (("divergence_weight", divergence_weight), ("ce_weight", ce_weight)):
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise ValueError(f"`{name}` must be a finite number, got {value!r}.")


def divergence_ce(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    divergence: Divergence = "kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    divergence_weight: float = 1.0,
    ce_weight: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    chunk_size: int = 1024,
) -> JointLoss:
    """A distillation divergence and the cross-entropy with the labels of the same student logits, in one pass.

    ``total = divergence_weight · D + ce_weight · CE`` where ``D`` is :func:`chunked_divergence` (forward KL(p_teacher
    || p_student), reverse KL(p_student || p_teacher) or the JSD, at temperature T, times T²) and ``CE`` is
    :func:`~hf_distill.losses.ce` (``−log softmax(z_s)[label]`` at T = 1, positions labelled ``-100`` skipped):
    the same values and the same gradient with respect to ``student_logits`` as computing the two separately and
    adding them with those weights. Returned as ``JointLoss(total, divergence, ce)``; only ``total`` has a gradient.

    Why: computed separately, ``kl_div`` and ``ce`` each take a log-softmax of the student's ``[N, V]`` logits and
    each keeps its own autograd intermediates; here each chunk of ``chunk_size`` counted rows is read once, its
    student log-softmax at T = 1 serves both terms (at T ≠ 1 the divergence needs ``log_softmax(z_s / T)``, so
    both are computed, still in the same pass), and the summed closed-form gradient (``T · ∂D/∂(z_s/T)`` as in
    :func:`chunked_divergence`, plus ``softmax(z_s) − onehot(label)`` for the CE) is written into one buffer.

    ``mask`` selects the positions of both terms; the CE further skips ``-100`` labels. ``reduction="mean"``
    averages ``D`` over the counted positions and ``CE`` over the counted labelled positions (each as its own
    function does); ``"sum"`` sums both. ``teacher_logits=None`` gives the CE alone (``D`` = 0).

    Example::

        >>> from hf_distill.losses import ce, kl_div
        >>> s, t = torch.randn(2, 5, 11, requires_grad=True), torch.randn(2, 5, 11)
        >>> y = torch.randint(0, 11, (2, 5))
        >>> out = divergence_ce(s, t, y, "kl", divergence_weight=0.5, ce_weight=0.5, chunk_size=3)
        >>> torch.allclose(out.total, 0.5 * kl_div(s, t) + 0.5 * ce(s, y))
        True
    """
    divergence = _check_options(divergence, beta, temperature, reduction, chunk_size)
    _check_weights(divergence_weight, ce_weight)
    if student_logits.dim() == 0 or (teacher_logits is not None and student_logits.shape != teacher_logits.shape):
        raise ValueError(
            f"student and teacher logits must have the same shape [..., V], got {tuple(student_logits.shape)} and "
            f"{None if teacher_logits is None else tuple(teacher_logits.shape)}."
        )
    targets = _joint_targets(labels, student_logits.shape[:-1], student_logits.shape[-1])
    rows = _counted_rows(student_logits.shape[:-1], mask, student_logits.device)
    total, div, ce = _DivergenceCE.apply(
        student_logits, None if teacher_logits is None else teacher_logits.detach(), targets.to(student_logits.device),
        rows, divergence, beta, temperature, reduction, int(chunk_size), float(divergence_weight), float(ce_weight),
    )
    return JointLoss(total, div, ce)


def topk_divergence_ce(
    student_logits: torch.Tensor,
    teacher_topk_logits: torch.Tensor,
    teacher_topk_indices: torch.Tensor,
    teacher_tail_mass: torch.Tensor,
    labels: torch.Tensor,
    divergence: Divergence = "kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    divergence_weight: float = 1.0,
    ce_weight: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    chunk_size: int = 1024,
) -> JointLoss:
    """:func:`divergence_ce` for a teacher known only by its top-k support (a teacher-signal cache):
    ``total = divergence_weight · D + ce_weight · CE`` with ``D`` = :func:`~hf_distill.losses.topk_divergence`
    (the divergence over the k + 1 buckets: the teacher's top-k tokens and the tail) and ``CE`` =
    :func:`~hf_distill.losses.ce`, in one pass over the student's logits, chunk by chunk, with one closed-form
    gradient buffer: the same values and gradients as the two functions computed separately and added.

    Computed separately, ``topk_divergence`` runs a log-sum-exp over the ``[N, V]`` logits, builds a second
    ``[N, V]`` copy for the tail's log-sum-exp and keeps autograd intermediates of both, and ``ce`` takes its own
    log-softmax; here one log-softmax per chunk serves both terms (at T = 1) and the tail is read from it.

    Args:
        teacher_topk_logits, teacher_topk_indices, teacher_tail_mass: the support, as in
            :func:`~hf_distill.losses.topk_divergence` (``[..., k]``, ``[..., k]``, ``[...]``).
        Others: as in :func:`divergence_ce`.

    Example::

        >>> from hf_distill.losses import ce, topk_divergence, topk_from_logits
        >>> s, t = torch.randn(2, 5, 11, requires_grad=True), torch.randn(2, 5, 11)
        >>> y, support = torch.randint(0, 11, (2, 5)), topk_from_logits(t, k=4)
        >>> out = topk_divergence_ce(s, *support, y, "kl", ce_weight=0.5, chunk_size=3)
        >>> torch.allclose(out.total, topk_divergence(s, *support) + 0.5 * ce(s, y))
        True
    """
    divergence = _check_options(divergence, beta, temperature, reduction, chunk_size)
    _check_weights(divergence_weight, ce_weight)
    if student_logits.dim() == 0:
        raise ValueError("`student_logits` must be [..., V], got a scalar.")
    lead, vocab = student_logits.shape[:-1], student_logits.shape[-1]
    _check_topk_support(student_logits.shape, teacher_topk_logits, teacher_topk_indices, teacher_tail_mass)
    support = (teacher_topk_logits.detach(), teacher_topk_indices.detach(), teacher_tail_mass.detach())
    targets = _joint_targets(labels, lead, vocab)
    rows = _counted_rows(lead, mask, student_logits.device)
    total, div, ce = _DivergenceCE.apply(
        student_logits, support, targets.to(student_logits.device), rows, divergence, beta, temperature, reduction,
        int(chunk_size), float(divergence_weight), float(ce_weight),
    )
    return JointLoss(total, div, ce)


class _FusedLinearDivergenceCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s_hidden, s_weight, s_bias, teacher_logits, targets, rows, divergence, beta, temperature,
                reduction, chunk_size, divergence_weight, ce_weight):
        hs = s_hidden.reshape(-1, s_hidden.shape[-1])
        teacher = _teacher_reader(teacher_logits)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        need_grad = need_h or need_w or need_b
        count = hs.shape[0] if rows is None else rows.numel()
        selected = targets if rows is None else targets[rows]
        labelled = int((selected != -100).sum())
        div_scale, ce_scale = _joint_scales(divergence_weight, ce_weight, temperature, reduction, count, labelled)
        ce_scale = ce_scale if labelled else None
        grad_h = hs.new_zeros(hs.shape) if need_h else None
        grad_w = s_weight.new_zeros(s_weight.shape, dtype=torch.float32) if need_w else None
        grad_b = s_bias.new_zeros(s_bias.shape, dtype=torch.float32) if need_b else None
        div_rows = None if teacher_logits is None else hs.new_zeros(count, dtype=torch.float32)
        ce_rows = hs.new_zeros(count, dtype=torch.float32)
        for start, stop, sel in _chunks(hs.shape[0], rows, chunk_size):
            h = hs[sel]
            d, c, g = _joint_chunk(F.linear(h, s_weight, s_bias).float(),
                                   teacher(sel), targets[sel], divergence,
                                   beta, temperature, div_scale, ce_scale, need_grad)
            if d is not None:
                div_rows[start:stop] = d
            ce_rows[start:stop] = c
            if g is not None:  # logits = h @ W.T + b  ⇒  ∂/∂h = g @ W,  ∂/∂W = g.T @ h,  ∂/∂b = Σ_rows g
                if grad_h is not None:
                    grad_h[sel] = g.to(s_weight.dtype) @ s_weight
                if grad_w is not None:
                    grad_w.addmm_(g.T, h.float())
                if grad_b is not None:
                    grad_b.add_(g.sum(dim=0))
            del d, c, g
        ctx.save_for_backward(
            None if grad_h is None else grad_h.view(s_hidden.shape),
            None if grad_w is None else grad_w.to(s_weight.dtype),
            None if grad_b is None else grad_b.to(s_bias.dtype),
        )
        total, div, ce = _joint_values(div_rows, ce_rows, labelled, divergence_weight, ce_weight, temperature,
                                       reduction)
        ctx.mark_non_differentiable(div, ce)
        return total, div, ce

    @staticmethod
    def backward(ctx, grad_total, grad_div, grad_ce):
        grad_h, grad_w, grad_b = (_scaled(g, grad_total) for g in ctx.saved_tensors)
        return (grad_h, grad_w, grad_b) + (None,) * 10


def fused_linear_divergence_ce(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    divergence: Divergence = "kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    divergence_weight: float = 1.0,
    ce_weight: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    chunk_size: int = 1024,
    student_bias: torch.Tensor | None = None,
    teacher_topk: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> JointLoss:
    """:func:`divergence_ce` computed from the student's final hidden states and LM head: the student's ``[N, V]``
    logits never exist for the whole batch.

    Equal, in value and gradients (with respect to ``student_hidden``, ``student_weight`` and ``student_bias``), to
    ``divergence_ce(student_hidden @ student_weight.T + student_bias, teacher_logits, labels, ...)``: the weighted
    sum ``divergence_weight · D + ce_weight · CE`` of the divergence (forward KL(p_teacher || p_student), reverse
    KL(p_student || p_teacher) or JSD, at T, times T²) and the cross-entropy with ``labels`` (``-100`` skipped).
    Each chunk's student logits are computed (in the hidden states' dtype, as the model's head would), used and
    freed; the gradients of the hidden states, weight and bias are accumulated chunk by chunk in the forward pass
    (as :func:`fused_linear_divergence` does). The teacher is given as logits (a live teacher's, a cache's or an
    ensemble's mixture); ``None`` gives the CE alone.

    Args:
        student_hidden: ``[..., H]`` the student's final hidden states (after its final norm: what the LM head reads).
        student_weight: ``[V, H]``; student_bias: optional ``[V]``.
        teacher_logits: ``[..., V]`` with the leading shape of ``student_hidden``, or None.
        labels: ``[...]`` token ids, ``-100`` = no CE at that position.
        teacher_topk: instead of ``teacher_logits``, a teacher known by its top-k support ``(top-k logits [..., k],
            their indices [..., k], tail mass [...])``: the divergence is then :func:`topk_divergence_ce`'s, over
            the k + 1 buckets (a teacher-signal cache: neither model's full logits exist).
        Others: as in :func:`divergence_ce`.
    """
    divergence = _check_options(divergence, beta, temperature, reduction, chunk_size)
    _check_weights(divergence_weight, ce_weight)
    _check_head("student", student_hidden, student_weight, student_bias)
    vocab = student_weight.shape[0]
    if teacher_logits is not None and teacher_logits.shape != (*student_hidden.shape[:-1], vocab):
        raise ValueError(
            f"`teacher_logits` must have shape {(*student_hidden.shape[:-1], vocab)} (the hidden states' leading "
            f"shape and the LM head's V), got {tuple(teacher_logits.shape)}."
        )
    if teacher_topk is not None:
        if teacher_logits is not None:
            raise ValueError("Give the teacher as `teacher_logits` or as `teacher_topk`, not both.")
        _check_topk_support((*student_hidden.shape[:-1], vocab), *teacher_topk)
        teacher = tuple(t.detach() for t in teacher_topk)
    else:
        teacher = None if teacher_logits is None else teacher_logits.detach()
    targets = _joint_targets(labels, student_hidden.shape[:-1], vocab)
    rows = _counted_rows(student_hidden.shape[:-1], mask, student_hidden.device)
    total, div, ce = _FusedLinearDivergenceCE.apply(
        student_hidden, student_weight, student_bias, teacher,
        targets.to(student_hidden.device), rows, divergence, beta, temperature, reduction, int(chunk_size),
        float(divergence_weight), float(ce_weight),
    )
    return JointLoss(total, div, ce)
