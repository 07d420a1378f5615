"""`Signals`: what one model produced for one batch, in the form every objective reads."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from . import losses

__all__ = [
    "Signals",
    "SIGNAL_NAMES",
    "FEATURE_PREFIX",
    "TEACHER_COMBINE_MODES",
    "feature_request",
    "feature_paths",
    "logit_divergence",
    "mixture_logits",
    "weighted_mean",
    "combine_signals",
]


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
        positive_embeddings / positive_mask: ``[B, D]`` pooled embeddings of each row's *positive* text (a relevant
            passage for a query, from the data's ``positive`` column) and ``[B]`` booleans, which rows have one
            (embedding task; rows without one hold zeros).
        scores: ``[B, C]`` ranking scores of each query's candidates, the positive first (ranking task).
        batch_scores: ``[B, B·C]`` each query's score against every candidate of the batch, in-batch negatives
            included (ranking task, bi-encoders only); query ``i``'s positive is column ``i·C``.
        candidate_embeddings: ``[B, C, D]`` a bi-encoder ranker's embeddings of each query's candidates, as it scores
            them (normalised for cosine), with the queries' in ``embeddings``: what a teacher-signal cache keeps to
            give ``batch_scores`` back (ranking task).
        head_hidden / head_weight / head_bias: for a fused loss (``fused: true`` on a divergence objective), in place
            of ``logits``: ``[..., H]`` the final hidden states the LM head reads, aligned with ``mask`` (shifted for
            causal LMs), and that head's ``[V, H]`` weight and ``[V]`` bias (or None); the logits are then computed
            chunk by chunk inside the loss (`chunked_losses.fused_linear_divergence_ce`), never for the whole batch.
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
    positive_embeddings: torch.Tensor | None = None
    positive_mask: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    batch_scores: torch.Tensor | None = None
    candidate_embeddings: torch.Tensor | None = None
    topk_logits: torch.Tensor | None = None
    topk_indices: torch.Tensor | None = None
    tail_mass: torch.Tensor | None = None
    head_hidden: torch.Tensor | None = None
    head_weight: torch.Tensor | None = None
    head_bias: torch.Tensor | None = None

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


# ---- several teachers: combining their signals into one ------------------------------------------------------------

#: How an ensemble's logits are combined (`combine_signals`): ``"probs"`` mixes the distributions, ``"logits"``
#: averages the logits.
TEACHER_COMBINE_MODES = ("probs", "logits")


def _normalized(weights: Sequence[float], count: int) -> list[float]:
    if len(weights) != count:
        raise ValueError(f"`weights` has {len(weights)} entries for {count} tensors; give one weight per teacher.")
    total = float(sum(weights))
    if any(w < 0 for w in weights) or not total > 0:
        raise ValueError(f"`weights` must be numbers >= 0 with a positive sum, got {list(weights)!r}.")
    return [float(w) / total for w in weights]


def mixture_logits(logits: Sequence[torch.Tensor], weights: Sequence[float], temperature: float = 1.0
                   ) -> torch.Tensor:
    """Logits of the weighted mixture of the teachers' distributions at temperature T:

        z = T · log Σ_k w_k · softmax(z_k / T)        (w normalised to sum to 1)

    so that ``softmax(z / T) = Σ_k w_k · softmax(z_k / T)`` exactly: an objective at temperature T sees the
    mixture of the teachers' tempered distributions. At T = 1 this is ``log Σ_k w_k p_k``, the log of the mixture.
    At any other objective temperature T' the objective tempers the mixture instead: ``softmax(z / T') ∝
    q^(T / T')`` where q is the mixture at T, which is *not* ``Σ_k w_k softmax(z_k / T')``.

    Computed as ``T · logsumexp_k(log w_k + log_softmax(z_k / T))`` in float32 (no ``log(softmax)``). Teachers with
    weight 0 are left out (their ``log w`` would be −inf).

    Args:
        logits: K tensors ``[..., V]`` of one shape.
        weights: K numbers >= 0 with a positive sum (normalised here).
        temperature: T > 0.

    Returns:
        ``[..., V]`` float32 logits.

    Example::

        >>> a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
        >>> mixture_logits([a, b], [0.5, 0.5]).softmax(-1)
        tensor([[0.5000, 0.5000]])
    """
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature!r}.")
    shares = _normalized(weights, len(logits))
    parts = [math.log(w) + torch.log_softmax(z.float() / temperature, dim=-1)
             for z, w in zip(logits, shares, strict=True) if w > 0]
    return temperature * torch.logsumexp(torch.stack(parts), dim=0)


def weighted_mean(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """The weighted mean ``Σ_k w_k · x_k`` (w normalised to sum to 1) of K tensors of one shape, in float32.

    For logits this is ``teacher_combine="logits"``: ``softmax(Σ_k w_k z_k / T)`` is a normalised geometric mean
    of the teachers' tempered distributions, the same rule at every temperature. Also the rule for embeddings,
    scores and hidden states of equal widths."""
    shares = _normalized(weights, len(tensors))
    return sum(w * x.float() for x, w in zip(tensors, shares, strict=True) if w > 0)


def _same_shapes(field: str, tensors: Sequence[torch.Tensor], names: Sequence[str]) -> None:
    for tensor, name in zip(tensors[1:], names[1:], strict=True):
        if tensor.shape != tensors[0].shape:
            raise ValueError(
                f"The teachers' {field} cannot be combined: {names[0]} gives shape {tuple(tensors[0].shape)} but "
                f"{name} gives {tuple(tensor.shape)}. Use teachers of one architecture (same widths, layers and heads) "
                f"for objectives that read {field}, or drop those objectives."
            )


def combine_signals(
    signals: Sequence[Signals],
    weights: Sequence[float],
    combine: str = "probs",
    temperature: float = 1.0,
    names: Sequence[str] | None = None,
) -> Signals:
    """One teacher's `Signals` from several teachers' signals for the same batch (`teacher.EnsembleTeacher`).

    - ``logits`` (and ``distillation_logits``): ``combine="probs"`` → `mixture_logits` at ``temperature``;
      ``combine="logits"`` → `weighted_mean`.
    - ``embeddings``: the weighted mean when every teacher has the same width; when widths differ, the
      concatenation ``[√w_1 · e_1, …, √w_K · e_K]`` (width Σ_k d_k), so that a learned projection ``P = [P_1; …;
      P_K]`` gives ``‖P s − e‖² = Σ_k w_k ‖P'_k s − e_k‖²`` (with ``P'_k = P_k / √w_k``): the weighted sum of
      per-teacher squared errors; L2-normalised teacher embeddings stay normalised.
    - ``scores``, ``batch_scores``, every layer of ``hidden_states`` / ``attentions`` and every captured
      ``features`` entry: the weighted mean (shapes must match, else a ``ValueError`` naming the teachers).
    - ``positive_embeddings``: as ``embeddings``.
    - ``labels``, ``mask``, ``token_mask``, ``positive_mask``: the first teacher's (every teacher sees the same
      batch).

    Top-k supports (a top-k teacher cache) cannot be combined. ``weights`` are >= 0 with a positive sum
    (normalised here); ``names`` label the teachers in errors (default ``teacher_model[k]``).
    """
    if combine not in TEACHER_COMBINE_MODES:
        raise ValueError(f"`teacher_combine` must be one of {', '.join(TEACHER_COMBINE_MODES)}, got {combine!r}.")
    names = list(names) if names is not None else [f"`teacher_model[{k}]`" for k in range(len(signals))]
    shares = _normalized(weights, len(signals))
    kept = [(s, w, n) for s, w, n in zip(signals, shares, names, strict=True) if w > 0]
    if len(kept) == 1:
        return kept[0][0]
    signals, shares, names = (list(x) for x in zip(*kept, strict=True))
    if any(s.topk_indices is not None for s in signals):
        raise ValueError("Top-k teacher signals (a top-k `teacher_cache`) cannot be combined across teachers; use "
                         "live teachers.")
    first = signals[0]
    combined = Signals(labels=first.labels, mask=first.mask, token_mask=first.token_mask)

    def present(field: str) -> list | None:
        values = [getattr(s, field) for s in signals]
        if all(v is None for v in values):
            return None
        if any(v is None for v in values):
            missing = [n for n, v in zip(names, values, strict=True) if v is None]
            raise ValueError(f"The teachers' {field} cannot be combined: {', '.join(missing)} returned none.")
        return values

    for field in ("logits", "distillation_logits"):
        values = present(field)
        if values is not None:
            _same_shapes(field, values, names)
            setattr(combined, field, mixture_logits(values, shares, temperature) if combine == "probs"
                    else weighted_mean(values, shares))
    for field in ("scores", "batch_scores"):
        values = present(field)
        if values is not None:
            _same_shapes(field, values, names)
            setattr(combined, field, weighted_mean(values, shares))
    combined.positive_mask = first.positive_mask
    for field in ("embeddings", "positive_embeddings"):
        values = present(field)
        if values is None:
            continue
        if len({v.shape[-1] for v in values}) > 1:
            _same_shapes(f"{field} (all but the last dimension)", [v[..., 0] for v in values], names)
            setattr(combined, field, torch.cat([math.sqrt(w) * v.float() for v, w in zip(values, shares, strict=True)],
                                               dim=-1))
        else:
            _same_shapes(field, values, names)
            setattr(combined, field, weighted_mean(values, shares))
    for field in ("hidden_states", "attentions"):
        values = present(field)
        if values is not None:
            if len({len(v) for v in values}) > 1:
                counts = ", ".join(f"{n}: {len(v)}" for n, v in zip(names, values, strict=True))
                raise ValueError(f"The teachers' {field} cannot be combined: they have different numbers of layers "
                                 f"({counts}). Use teachers with as many layers, or drop the objectives that read "
                                 f"{field}.")
            layers = []
            for layer in zip(*values, strict=True):
                _same_shapes(field, layer, names)
                layers.append(weighted_mean(layer, shares))
            setattr(combined, field, tuple(layers))
    values = present("features")
    if values is not None:
        combined.features = {}
        for path in values[0]:
            per_teacher = [v.get(path) for v in values]
            if any(t is None for t in per_teacher):
                continue  # a module only some teachers have: objectives check their paths against each model
            _same_shapes(f"features[{path!r}]", per_teacher, names)
            combined.features[path] = weighted_mean(per_teacher, shares)
    return combined
