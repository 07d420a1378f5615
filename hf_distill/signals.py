"""`Signals`: what one model produced for one batch, in the form every objective reads."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

__all__ = ["Signals", "SIGNAL_NAMES"]


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
        hidden_states: tuple of ``[B, L, H]`` per layer (embeddings first), when requested.
        attentions: tuple of ``[B, heads, L, L]`` per layer, when requested.
        embeddings: ``[B, D]`` pooled embeddings (embedding task).
        scores: ``[B, C]`` ranking scores of each query's candidates, the positive first (ranking task).
        batch_scores: ``[B, B·C]`` each query's score against every candidate of the batch, in-batch negatives
            included (ranking task, bi-encoders only); query ``i``'s positive is column ``i·C``.
        topk_logits / topk_indices / tail_mass: a cached teacher's top-k support (teacher-signal cache).
    """

    logits: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
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


SIGNAL_NAMES: frozenset[str] = frozenset(f.name for f in fields(Signals))
