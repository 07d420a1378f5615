"""Perplexity from per-token negative log-likelihoods that a model has already produced.

Unlike the Hub's ``perplexity`` measurement, this module never loads or runs a model: it takes the NLL of each
counted token (e.g. from ``hf_distill.metrics.token_nlls(logits, labels)``) and reports the corpus perplexity.
Shipped inside ``hf_distill`` so that it loads from a local path, with no network access:

    from hf_distill.metrics import load
    perplexity = load("perplexity")
"""

import math

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """\
Perplexity of a language model, computed from the negative log-likelihood (NLL, natural log) that the model gave
to each token it had to predict:

    mean_nll   = (1 / N) * sum over all N counted tokens of all examples of nll
    perplexity = exp(mean_nll)

The average is token-weighted (corpus perplexity): every token counts once, so a long example weighs more than a
short one. This is what a language-model evaluation reports, and it equals exp of the model's mean
cross-entropy over the evaluation set. The per-example values, exp of each example's own mean NLL, are returned
as well under `perplexities`; their mean is NOT the corpus perplexity when examples differ in length.

Getting the NLLs from a causal LM: shift so that position t predicts token t + 1 (`logits[:, :-1]`,
`labels[:, 1:]`), keep the positions whose label is not -100, and take `-log_softmax(logits)[label]` there.
`hf_distill.metrics.token_nlls(logits, labels, causal=True)` does exactly this (pass `causal=False` for logits
that are already aligned with their labels, e.g. those `DistillationTrainer` hands to `compute_metrics`, or for
masked LMs).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): for each example, the NLL in nats of each counted token, one value
        per token. An example may have no tokens: it adds nothing to the corpus value and its own perplexity is
        `nan`.

Returns:
    perplexity (`float`): exp of the mean NLL over all tokens of all examples (token-weighted, corpus perplexity).
    mean_nll (`float`): that mean NLL (the cross-entropy, in nats per token).
    num_tokens (`int`): the number of tokens counted.
    perplexities (`list` of `float`): exp of each example's own mean NLL.

Examples:

    >>> import math
    >>> from hf_distill.metrics import load
    >>> perplexity = load("perplexity")
    >>> out = perplexity.compute(predictions=[[math.log(2)], [math.log(8), math.log(8), math.log(8)]])
    >>> round(out["perplexity"], 4), out["num_tokens"], [round(p, 4) for p in out["perplexities"]]
    (5.6569, 4, [2.0, 8.0])
"""

_CITATION = ""


def _exp(value: float) -> float:
    """exp that saturates to inf instead of raising OverflowError (a diverged model has a huge NLL)."""
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Perplexity(evaluate.Metric):
    """Token-weighted (corpus) perplexity from per-token negative log-likelihoods; no model is run."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float64"))}),
            reference_urls=["https://en.wikipedia.org/wiki/Perplexity"],
        )

    def _compute(self, predictions):
        per_example = [np.asarray(nlls, dtype=np.float64).reshape(-1) for nlls in predictions]
        num_tokens = sum(nlls.size for nlls in per_example)
        if num_tokens == 0:
            raise ValueError("perplexity needs at least one token NLL; every example given is empty")
        total = float(sum(nlls.sum() for nlls in per_example))
        mean_nll = total / num_tokens
        return {
            "perplexity": _exp(mean_nll),
            "mean_nll": mean_nll,
            "num_tokens": int(num_tokens),
            "perplexities": [_exp(float(nlls.mean())) if nlls.size else math.nan for nlls in per_example],
        }
