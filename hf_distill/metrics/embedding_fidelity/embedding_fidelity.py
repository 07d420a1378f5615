"""Embedding fidelity: how closely a student's sentence embeddings reproduce the teacher's, text by text.

The maths lives in ``hf_distill.embedding_metrics`` (``mean_cosine``, ``similarity_spearman``,
``neighbour_overlap``); this module wraps it for ``evaluate``. Shipped inside ``hf_distill`` so that it loads from
a local path, with no network access:

    from hf_distill.metrics import load
    fidelity = load("embedding_fidelity")
"""

import datasets
import evaluate
import numpy as np

from hf_distill.embedding_metrics import mean_cosine, neighbour_overlap, similarity_spearman

_DESCRIPTION = """\
Compares the student's embedding s_i and the teacher's embedding t_i of the same N texts (cosine similarity
throughout, so rescaling any embedding by a positive factor changes nothing):

    mean_cosine          = (1 / N) * sum_i cos(s_i, t_i)
                           reported only when student and teacher have the same width (the same space)
    similarity_spearman  = Spearman rank correlation between the pairwise similarities cos(s_i, s_j) and
                           cos(t_i, t_j) over all pairs i < j (ties get average ranks; needs N >= 3)
    neighbour_overlap@k  = (1 / N) * sum_i |NN_k^student(i) intersected with NN_k^teacher(i)| / k
                           where NN_k(i) are the k texts other than i most cosine-similar to text i
                           (ties: lower index first; k is capped at N - 1)

mean_cosine asks whether the student puts each text where the teacher does; the other two only ask whether it
arranges the texts the same way relative to each other, so they also work for a student of a different width.
similarity_spearman ranges from -1 to 1, the others from 0 to 1 (mean_cosine from -1) with 1 the best.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): the student's embedding of each text, all of one width.
    references (`list` of `list` of `float`): the teacher's embedding of the same texts in the same order, all of
        one width (which may differ from the student's).
    k (`int`, defaults to 10): how many nearest neighbours to compare.

Returns:
    mean_cosine (`float`): mean cosine between matching rows; omitted when the widths differ.
    similarity_spearman (`float`): rank correlation of the pairwise similarities.
    neighbour_overlap@k (`float`): mean shared share of the k nearest neighbours, under the key
        `neighbour_overlap@<k>` (e.g. `neighbour_overlap@10`).

Examples:

    >>> from hf_distill.metrics import load
    >>> fidelity = load("embedding_fidelity")
    >>> teacher = [[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]]
    >>> student = [[2.0, 0.0], [1.6, 1.2], [0.0, 2.0], [-1.2, 1.6]]  # the teacher's rows, doubled
    >>> out = fidelity.compute(predictions=student, references=teacher, k=1)
    >>> {name: round(value, 4) for name, value in out.items()}
    {'mean_cosine': 1.0, 'similarity_spearman': 1.0, 'neighbour_overlap@1': 1.0}
"""

_CITATION = ""


def _matrix(rows, name):
    widths = {len(row) for row in rows}
    if len(widths) > 1:
        raise ValueError(f"every {name} embedding must have the same width; got widths {sorted(widths)}")
    return np.asarray(rows, dtype=np.float64)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class EmbeddingFidelity(evaluate.Metric):
    """Student-vs-teacher embedding agreement: mean cosine, similarity rank correlation, neighbour overlap."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Sequence(datasets.Value("float32")),
                }
            ),
            reference_urls=["https://en.wikipedia.org/wiki/Spearman%27s_rank_correlation_coefficient"],
        )

    def _compute(self, predictions, references, k=10):
        student = _matrix(predictions, "predictions")
        teacher = _matrix(references, "references")
        out = {}
        if student.shape[1:] == teacher.shape[1:]:
            out["mean_cosine"] = mean_cosine(student, teacher)
        out["similarity_spearman"] = similarity_spearman(student, teacher)
        out[f"neighbour_overlap@{k}"] = neighbour_overlap(student, teacher, k=k)
        return out
