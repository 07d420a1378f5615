"""`Signals`: what one model produced for one batch, in the form every objective reads."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from . import losses

__all__ = ["Signals", "SIGNAL_NAMES", "FEATURE_PREFIX", "feature_request", "feature_paths", "logit_divergence"]


@dataclass
class Signals:
    """Outputs of a model (student or teacher) for one batch, aligned by the task adapter.

    Objectives read only this, so they never know which model, task or cache produced it. Every field is
    optional; an objective declares which fields it needs and the task adapter fills exactly those.

    Attributes:
        logits: ``[..., V]`` class/token scores aligned with ``mask`` (for causal LMs already shifted so that
            position ``t`` predicts token ``t + 1``).
        labels: ``[...]`` ground-truth targets aligned with ``logits``, ``-100`` = ignore.
        mask: ``[...]`` booleans: the positions ("items") that count. Losses are summed over these and the
            trainer divides by their number over the whole accumulated batch.
        distillation_logits: ``[B, C]`` a second classification head trained on the teacher: DeiT's distillation
            token (``DeiTForImageClassificationWithTeacher``, vision task); ``logits`` is then its class-token head.
        hidden_states: tuple of ``[B, L, H]`` per layer (embeddings first), when requested.
        attentions: tuple of ``[B, heads, L, L]`` per layer, when requested.
        token_mask: ``[B, L]`` booleans, which positions of ``hidden_states`` / ``attentions`` are real tokens (the
            ``attention_mask``), for tasks whose items are examples; None = every position is real.
        features: ``{module path: output}`` captured by forward hooks (`hf_distill.hooks.capture_features`) for the
            objectives that request ``"features:<path>"`` (see `feature_request`).
        embeddings: ``[B, D]`` pooled embeddings (embedding task).
        scores: ``[B, C]`` ranking scores of each query's candidates, the positive first (ranking task).
        batch_scores: ``[B, B·C]`` each query's score against every candidate of the batch, in-batch negatives
            included (ranking task, bi-encoders only); query ``i``'s positive is column ``i·C``.
        topk_logits / topk_indices / tail_mass: a cached teacher's top-k support (teacher-signal cache): ``[..., k]``
            logits at T = 1 and their vocabulary indices, and ``[...]`` the probability mass outside them, in
            place of ``logits`` (see `losses.topk_divergence`).
    """

    logits: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    distillation_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    token_mask: torch.Tensor | None = None
    features: dict[str, torch.Tensor] | None = None
    embeddings: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    batch_scores: torch.Tensor | None = None
    topk_logits: torch.Tensor | None = None
    topk_indices: torch.Tensor | None = None
    tail_mass: torch.Tensor | None = None

    def num_items(self) -> int:
        """Number of counted positions in this batch."""
        if self.mask is None:
            raise ValueError("These signals carry no `mask`, so their number of items is unknown.")
        return int(self.mask.sum())

    def has_distribution(self) -> bool:
        """Whether these signals describe a distribution over classes/tokens: full logits or a top-k support."""
        return self.logits is not None or self.topk_indices is not None

    def top1(self) -> torch.Tensor:
        """``[...]`` the most likely class/token at each position (from the logits, or the top-k support)."""
        if self.logits is not None:
            return self.logits.argmax(-1)
        if self.topk_indices is None:
            raise ValueError("These signals carry neither `logits` nor a top-k support.")
        return self.topk_indices.gather(-1, self.topk_logits.argmax(-1, keepdim=True)).squeeze(-1)


SIGNAL_NAMES: frozenset[str] = frozenset(f.name for f in fields(Signals))

#: An objective's ``requires`` entry ``"features:<dotted.module.path>"`` asks for that module's output, captured by a
#: forward hook in each model that has the module, and delivered as ``signals.features[path]``.
FEATURE_PREFIX = "features:"


def feature_request(path: str) -> str:
    """The ``requires`` entry asking for the output of the module at ``path`` (e.g. ``"vit.encoder.layer.1"``)."""
    return FEATURE_PREFIX + path


def feature_paths(requires: frozenset[str]) -> list[str]:
    """The module paths requested in ``requires`` (sorted; empty when no objective requests features)."""
    return sorted(r[len(FEATURE_PREFIX):] for r in requires if r.startswith(FEATURE_PREFIX))


def logit_divergence(
    student: Signals,
    teacher: Signals,
    divergence: str = "kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: losses.Reduction = "sum",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """``divergence`` ("kl", "reverse_kl" or "jsd") between the student's logits and the teacher's distribution,
    whichever form the teacher's signals take: full logits (a live teacher or a full-logit cache, the dense
    `losses.kl_div` / `reverse_kl` / `jsd`, or `losses.chunked_divergence` with ``chunk_size``) or a top-k support
    (a top-k cache, `losses.topk_divergence`)."""
    if teacher.logits is not None and chunk_size is not None:
        return losses.chunked_divergence(student.logits, teacher.logits, divergence, beta=beta,
                                         temperature=temperature, mask=mask, reduction=reduction,
                                         chunk_size=chunk_size)
    if teacher.logits is not None:
        if divergence == "jsd":
            return losses.jsd(student.logits, teacher.logits, beta=beta, temperature=temperature, mask=mask,
                              reduction=reduction)
        dense = {"kl": losses.kl_div, "reverse_kl": losses.reverse_kl}[divergence]
        return dense(student.logits, teacher.logits, temperature=temperature, mask=mask, reduction=reduction)
    if teacher.topk_indices is None:
        raise ValueError("The teacher's signals carry neither `logits` nor a top-k support (`topk_indices`); a "
                         "logit objective needs one of them.")
    return losses.topk_divergence(student.logits, teacher.topk_logits, teacher.topk_indices, teacher.tail_mass,
                                  divergence=divergence, beta=beta, temperature=temperature, mask=mask,
                                  reduction=reduction)
