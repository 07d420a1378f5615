"""Task metrics shipped as ``evaluate`` modules inside the package, so they load offline.

``evaluate.load("accuracy")`` fetches a script from the Hugging Face Hub and fails without a network. The modules
here are plain ``evaluate.Metric`` scripts stored in ``<METRICS_DIR>/<name>/<name>.py`` and loaded by path:

    from hf_distill.metrics import load
    accuracy = load("accuracy")
    accuracy.compute(predictions=[0, 1, 1], references=[0, 1, 0])   # {'accuracy': 0.666...}

``token_nlls`` turns a language model's logits and labels into the per-token NLLs that the ``perplexity``
module takes. ``evaluate`` and ``torch`` are imported only when used, so importing this package stays light.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import evaluate

__all__ = ["METRICS_DIR", "available", "load", "token_nlls"]

METRICS_DIR = Path(__file__).resolve().parent
"""The folder holding one ``<name>/<name>.py`` evaluate script per shipped metric."""

_IGNORE_INDEX = -100


def available() -> list[str]:
    """Names of the shipped metrics: the subfolders of ``METRICS_DIR`` that hold ``<name>/<name>.py``, sorted."""
    return sorted(
        entry.name for entry in METRICS_DIR.iterdir() if entry.is_dir() and (entry / f"{entry.name}.py").is_file()
    )


def load(name: str, **kwargs: Any) -> evaluate.EvaluationModule:
    """Load the shipped metric ``name`` with ``evaluate.load`` from its local script (no network needed).

    ``kwargs`` go to ``evaluate.load`` unchanged (``experiment_id``, ``num_process``, ``cache_dir``, ...). An
    unknown name is a ``ValueError`` that lists the available metrics and suggests the closest one.
    """
    names = available()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown metric {name!r}.{hint} Available metrics: {', '.join(names)}.")
    import evaluate

    return evaluate.load(str(METRICS_DIR / name / f"{name}.py"), **kwargs)


def token_nlls(logits: Any, labels: Any, causal: bool = True) -> list[list[float]]:
    """Per-token negative log-likelihoods (nats), one list per example, to feed the ``perplexity`` metric.

    Args:
        logits: ``[B, L, V]`` scores, a ``torch.Tensor`` or anything ``torch.as_tensor`` accepts (e.g. the numpy
            ``EvalPrediction.predictions`` a ``Trainer`` passes to ``compute_metrics``).
        labels: ``[B, L]`` target token ids; ``-100`` marks positions that are not counted (padding, prompt).
        causal: ``True`` for a causal LM's raw outputs: position ``t`` predicts token ``t + 1``, so the logits
            are ``logits[:, :-1]`` and the labels ``labels[:, 1:]``, as the models' own loss shifts them. ``False``
            when logits and labels are already aligned: a masked LM, or the shifted logits and labels that
            ``DistillationTrainer`` passes to ``compute_metrics``.

    Returns:
        For each example, ``-log_softmax(logits)[label]`` at each counted position, in order. The maths is done
        in float32 (float64 inputs stay float64), one example at a time on its counted positions only, so half
        precision logits are safe and no ``[B, L, V]`` float copy is made.
    """
    import torch

    logits = torch.as_tensor(logits)
    labels = torch.as_tensor(labels)
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"token_nlls expects logits [B, L, V] and labels [B, L]; got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if causal:
        logits, labels = logits[:, :-1], labels[:, 1:]
    labels = labels.long()
    counted = labels != _IGNORE_INDEX
    vocab = logits.shape[-1]
    bad = counted & ((labels < 0) | (labels >= vocab))
    if bad.any():
        raise ValueError(f"labels must be -100 (ignored) or a token id in [0, {vocab}); found {labels[bad][0].item()}")
    compute_dtype = torch.promote_types(logits.dtype, torch.float32)

    out: list[list[float]] = []
    for row_logits, row_labels, row_counted in zip(logits, labels, counted, strict=True):
        scores = row_logits[row_counted].to(compute_dtype)  # [n, V], only the counted positions
        targets = row_labels[row_counted]
        nll = -torch.log_softmax(scores, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        out.append(nll.tolist())
    return out
