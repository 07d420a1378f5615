"""Accuracy: the share (or number) of examples whose predicted class id equals the reference class id.

Shipped inside ``hf_distill`` so that it loads from a local path, with no network access:

    from hf_distill.metrics import load
    accuracy = load("accuracy")

Plain numpy; the optional ``sample_weight`` makes some examples count more than others.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """\
Accuracy is the fraction of examples that are classified correctly:

    accuracy = sum_i w_i * [prediction_i == reference_i] / sum_i w_i

with every weight w_i = 1 unless `sample_weight` is given. With `normalize=False` the numerator alone is
returned: the number of correct examples (or, with weights, their total weight). It ranges from 0 to 1
(normalised) and is meant for single-label classification with integer class ids.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids, one per example (e.g. `logits.argmax(-1)`).
    references (`list` of `int`): true class ids, one per example.
    normalize (`bool`, defaults to `True`): `True` returns the (weighted) fraction of correct examples,
        `False` the (weighted) count of correct examples.
    sample_weight (`list` of `float`, *optional*): one non-negative weight per example; `None` weighs every
        example 1.

Returns:
    accuracy (`float`): the fraction of correct examples in [0, 1], or their (weighted) count when
        `normalize=False`.

Examples:

    >>> from hf_distill.metrics import load
    >>> accuracy = load("accuracy")
    >>> accuracy.compute(predictions=[0, 1, 2, 1], references=[0, 1, 2, 2])
    {'accuracy': 0.75}
    >>> accuracy.compute(predictions=[0, 1, 2, 1], references=[0, 1, 2, 2], normalize=False)
    {'accuracy': 3.0}
    >>> accuracy.compute(predictions=[0, 1, 2, 1], references=[0, 1, 2, 2], sample_weight=[1, 1, 1, 3])
    {'accuracy': 0.5}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    """Single-label classification accuracy, optionally weighted per example."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int64"),
                    "references": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://en.wikipedia.org/wiki/Accuracy_and_precision"],
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        predicted = np.asarray(predictions, dtype=np.int64)
        expected = np.asarray(references, dtype=np.int64)
        if predicted.shape != expected.shape:
            raise ValueError(f"predictions and references differ in length: {predicted.shape} vs {expected.shape}")
        hits = (predicted == expected).astype(np.float64)

        if sample_weight is None:
            weights = np.ones_like(hits)
        else:
            weights = np.asarray(sample_weight, dtype=np.float64)
            if weights.shape != hits.shape:
                raise ValueError(
                    f"sample_weight needs one weight per example: got {weights.size} weights for {hits.size} examples"
                )
            if np.any(weights < 0):
                raise ValueError("sample_weight must not contain negative weights")

        correct = float(np.dot(hits, weights))
        if not normalize:
            return {"accuracy": correct}
        total = float(weights.sum())
        if total == 0.0:
            raise ValueError("accuracy is undefined with no examples (or with weights that sum to zero)")
        return {"accuracy": correct / total}
