"""Retrieval quality of ranked result lists: nDCG@k and recall@k with binary relevance.

The ranking is done beforehand (e.g. by cosine similarity of sentence embeddings, see
``hf_distill.embedding_metrics.rank_documents``); this module only scores it, with the same function
(``hf_distill.embedding_metrics.ranking_scores``) that ``retrieval_scores`` uses. Shipped inside ``hf_distill`` so
that it loads from a local path, with no network access:

    from hf_distill.metrics import load
    retrieval = load("retrieval")
"""

import datasets
import evaluate

from hf_distill.embedding_metrics import ranking_scores

_DESCRIPTION = """\
Scores, for each query, a list of document ids ranked best first against the set R of ids relevant to that query.
Only the first k ranked ids count; a relevant id at rank r (from 1) earns 1 / log2(r + 1):

    DCG@k    = sum over r = 1..k of [d_r in R] / log2(r + 1)
    IDCG@k   = sum over r = 1..min(k, |R|) of 1 / log2(r + 1)       (every relevant document ranked first)
    nDCG@k   = DCG@k / IDCG@k
    recall@k = |{d_1, ..., d_k} intersected with R| / |R|

Both are averaged over the queries. A query with no relevant document cannot be scored and is skipped. nDCG@k
rewards putting relevant documents near the top; recall@k only asks whether they made it into the top k (and
cannot reach 1 when |R| > k). Both range from 0 to 1.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `int`): for each query, document ids ranked best first (at least the top k;
        ids must not repeat within the top k).
    references (`list` of `list` of `int`): for each query, the ids of its relevant documents (order does not
        matter; an empty list skips the query).
    k (`int`, defaults to 10): the cut-off rank.

Returns:
    ndcg@k (`float`): mean nDCG over the scored queries, under the key `ndcg@<k>` (e.g. `ndcg@10`).
    recall@k (`float`): mean recall over the scored queries, under the key `recall@<k>`.

Examples:

    >>> from hf_distill.metrics import load
    >>> retrieval = load("retrieval")
    >>> out = retrieval.compute(predictions=[[2, 0, 1], [5, 4, 3]], references=[[0, 1], [5]], k=2)
    >>> {name: round(value, 4) for name, value in out.items()}
    {'ndcg@2': 0.6934, 'recall@2': 0.75}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Retrieval(evaluate.Metric):
    """nDCG@k and recall@k of ranked document-id lists with binary relevance."""

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
            reference_urls=["https://en.wikipedia.org/wiki/Discounted_cumulative_gain"],
        )

    def _compute(self, predictions, references, k=10):
        return ranking_scores(predictions, references, k=k)
