"""Ranking quality of ranked candidate lists: MRR@k and nDCG@k with binary relevance.

Scores what a ranker returned for each query, best first, against the ids that are relevant to it. The maths is
``hf_distill.embedding_metrics.mean_reciprocal_rank`` and ``ranking_scores`` (the same functions the trainer's
ranking evaluation uses). Shipped inside ``hf_distill`` so that it loads from a local path, with no network access:

    from hf_distill.metrics import load
    ranking = load("ranking")
"""

import datasets
import evaluate

from hf_distill.embedding_metrics import mean_reciprocal_rank, ranking_scores

_DESCRIPTION = """\
Scores, for each query, a list of candidate ids ranked best first against the set R of ids relevant to that query.
Only the first k ranked ids count. With r the rank (from 1) of the first relevant id in the top k:

    RR@k     = 1 / r, or 0 when no relevant id is in the top k          MRR@k = mean of RR@k over the queries
    DCG@k    = sum over r = 1..k of [d_r in R] / log2(r + 1)
    IDCG@k   = sum over r = 1..min(k, |R|) of 1 / log2(r + 1)
    nDCG@k   = DCG@k / IDCG@k

A query with no relevant id cannot be scored and is skipped. With one relevant passage per query (re-ranking a
positive among negatives) nDCG@k = 1 / log2(r + 1).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `int`): for each query, candidate ids ranked best first (ids must not repeat
        within the top k).
    references (`list` of `list` of `int`): for each query, the ids of its relevant candidates (an empty list skips
        the query).
    k (`int`, defaults to 10): the cut-off rank.

Returns:
    mrr@k (`float`): mean reciprocal rank, under the key `mrr@<k>` (e.g. `mrr@10`).
    ndcg@k (`float`): mean nDCG, under the key `ndcg@<k>`.

Examples:

    >>> from hf_distill.metrics import load
    >>> ranking = load("ranking")
    >>> out = ranking.compute(predictions=[[2, 0, 1], [5, 4, 3]], references=[[0], [3]], k=10)
    >>> {name: round(value, 4) for name, value in out.items()}
    {'mrr@10': 0.4167, 'ndcg@10': 0.5655}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Ranking(evaluate.Metric):
    """MRR@k and nDCG@k of ranked candidate-id lists with binary relevance."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
            reference_urls=["https://en.wikipedia.org/wiki/Mean_reciprocal_rank"],
        )

    def _compute(self, predictions, references, k=10):
        return {f"mrr@{k}": mean_reciprocal_rank(predictions, references, k=k),
                f"ndcg@{k}": ranking_scores(predictions, references, k=k)[f"ndcg@{k}"]}
