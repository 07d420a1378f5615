"""How faithfully a student's sentence embeddings reproduce a teacher's, and how well embeddings retrieve.

Pure functions: embeddings go in as ``torch.Tensor``, ``numpy`` arrays or nested lists (one row per text), floats
come out. All maths is done in float64 on CPU whatever the input dtype or device, so half-precision embeddings
are safe. Cosine similarity is used throughout, which makes every function here invariant to rescaling any row
by a positive factor. A row of zeros has cosine 0 with everything (its norm is clamped, as
``torch.nn.functional.cosine_similarity`` does).

Fidelity (student vs teacher, row ``i`` of both is the same text):

* :func:`mean_cosine`: direct agreement, when both live in one space (same width).
* :func:`similarity_spearman`: do both order the pairs of texts by similarity the same way? (widths may differ)
* :func:`neighbour_overlap`: do both give each text the same nearest neighbours? (widths may differ)

Retrieval:

* :func:`ranking_scores`: nDCG@k and recall@k from ranked document-id lists, and :func:`mean_reciprocal_rank`
  (MRR@k); the one place where that maths lives (the ``retrieval`` and ``ranking`` evaluate modules use them too).
* :func:`rank_candidates`: order each query's scored candidates (re-ranking), ties counted against the positive.
* :func:`rank_documents` / :func:`retrieval_scores`: rank documents by cosine similarity and score the ranking.
* :func:`retrieval_task`: a real query/document task cut from the bundled standard-library docstring corpus.

``numpy`` is the only import at module level; ``datasets`` is imported by :func:`retrieval_task` when called.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "mean_cosine",
    "mean_reciprocal_rank",
    "neighbour_overlap",
    "rank_candidates",
    "rank_documents",
    "ranking_scores",
    "retrieval_scores",
    "retrieval_task",
    "similarity_spearman",
    "spearman",
]

_TINY = 1e-12  # norms are clamped to this, so a zero row has cosine 0 with every row

# Rows of the similarity matrix handled at once by the top-k searches (bounds memory at _BLOCK x N floats).
_BLOCK = 1024


# --- helpers ------------------------------------------------------------------------------------------------------


def _matrix(embeddings: Any, name: str) -> np.ndarray:
    """``embeddings`` as a finite float64 ``[N, D]`` numpy array (torch tensors are detached and moved to CPU)."""
    if hasattr(embeddings, "detach"):  # a torch.Tensor; torch itself is not imported here
        embeddings = embeddings.detach().to("cpu").double().numpy()
    try:
        array = np.asarray(embeddings, dtype=np.float64)
    except ValueError as error:  # ragged nested lists
        raise ValueError(f"{name} must be a 2-D [N, D] array of numbers: {error}") from None
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, D]; got shape {tuple(array.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column; got shape {tuple(array.shape)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _unit_rows(array: np.ndarray) -> np.ndarray:
    """Each row divided by its L2 norm (clamped below at ``_TINY``)."""
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, _TINY)


def _pair(student: Any, teacher: Any, min_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Student and teacher as unit-row float64 matrices with the same number of rows (>= ``min_rows``)."""
    s = _matrix(student, "student")
    t = _matrix(teacher, "teacher")
    if s.shape[0] != t.shape[0]:
        raise ValueError(
            f"student and teacher must embed the same texts (same number of rows); got shapes {tuple(s.shape)} "
            f"and {tuple(t.shape)}"
        )
    if s.shape[0] < min_rows:
        raise ValueError(f"need at least {min_rows} rows; got shapes {tuple(s.shape)} and {tuple(t.shape)}")
    return _unit_rows(s), _unit_rows(t)


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _top_k(queries: np.ndarray, docs: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    """``[Q, k]`` indices of the ``k`` rows of ``docs`` most cosine-similar to each row of ``queries`` (both already
    unit rows), best first, ties broken by the lower index. ``exclude_self`` drops row ``i`` from the candidates of
    query ``i`` (``queries`` and ``docs`` are then the same matrix)."""
    out = np.empty((queries.shape[0], k), dtype=np.int64)
    for start in range(0, queries.shape[0], _BLOCK):
        sims = queries[start : start + _BLOCK] @ docs.T
        if exclude_self:
            rows = np.arange(sims.shape[0])
            sims[rows, start + rows] = -np.inf
        # A stable sort of the negated scores keeps equal scores in index order.
        out[start : start + sims.shape[0]] = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return out


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values`` (ascending); tied values all get the mean of the ranks they span."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    # Start of each run of equal values in sorted order, and the run each sorted position belongs to.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]  # exclusive
    run_of = np.repeat(np.arange(starts.size), ends - starts)
    # Positions start..end-1 hold ranks start+1..end, whose mean is (start + 1 + end) / 2.
    run_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = run_rank[run_of]
    return ranks


# --- fidelity -----------------------------------------------------------------------------------------------------


def mean_cosine(student: Any, teacher: Any) -> float:
    """Mean cosine similarity between matching rows of the student and teacher embeddings.

    .. math::  \\text{mean\\_cosine} = \\frac{1}{N} \\sum_{i=1}^{N} \\frac{s_i \\cdot t_i}{\\lVert s_i \\rVert \\,
        \\lVert t_i \\rVert}

    Only meaningful when both live in the same space, so both must be ``[N, D]`` with the same ``N`` and ``D``
    (project the student into the teacher's width first otherwise); a shape mismatch is a ``ValueError`` naming
    both shapes. 1 means the student points every text exactly where the teacher does; range [-1, 1].
    """
    s = _matrix(student, "student")
    t = _matrix(teacher, "teacher")
    if s.shape != t.shape:
        raise ValueError(
            f"mean_cosine needs student and teacher embeddings of the same shape [N, D]; got student "
            f"{tuple(s.shape)} and teacher {tuple(t.shape)}"
        )
    cosines = np.einsum("nd,nd->n", _unit_rows(s), _unit_rows(t))
    return float(np.mean(cosines))


def spearman(x: Any, y: Any) -> float:
    """Spearman's rank correlation of two equally long 1-D samples: the Pearson correlation of their ranks.

    .. math::  \\rho = \\frac{\\sum_m (r_m - \\bar r)(q_m - \\bar q)}{\\sqrt{\\sum_m (r_m - \\bar r)^2 \\,
        \\sum_m (q_m - \\bar q)^2}}

    where ``r`` and ``q`` are the ranks of ``x`` and ``y`` and tied values share the average of their ranks. Without
    ties this equals :math:`1 - 6 \\sum_m (r_m - q_m)^2 / (n (n^2 - 1))`. Returns ``nan`` when either sample is
    constant (the correlation is undefined). Needs at least 2 values.
    """
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    b = np.asarray(y, dtype=np.float64).reshape(-1)
    if a.size != b.size:
        raise ValueError(f"spearman needs two samples of the same length; got {a.size} and {b.size}")
    if a.size < 2:
        raise ValueError(f"spearman needs at least 2 values; got {a.size}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("spearman got NaN or infinite values")
    ra = _average_ranks(a)
    rb = _average_ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denominator = math.sqrt(float(np.dot(ra, ra)) * float(np.dot(rb, rb)))
    if denominator == 0.0:
        return math.nan
    return float(np.dot(ra, rb) / denominator)


def similarity_spearman(student: Any, teacher: Any) -> float:
    """Do student and teacher agree on which pairs of texts are more similar than others?

    With ``S_ij = cos(s_i, s_j)`` and ``T_ij = cos(t_i, t_j)``, this is Spearman's rank correlation (see
    :func:`spearman`; ties get average ranks) between the ``N (N - 1) / 2`` values ``S_ij`` and ``T_ij`` for
    ``i < j``:

    .. math::  \\rho\\big( (S_{ij})_{i<j}, \\; (T_{ij})_{i<j} \\big)

    Only similarities within each model are compared, so the widths may differ (e.g. a narrow student without a
    projection). Needs ``N >= 3`` rows (two rows give a single pair, which has no ranking). Range [-1, 1]; ``nan``
    if all pairs are equally similar under one of the models. Memory and time grow as ``N^2``.
    """
    s, t = _pair(student, teacher, min_rows=3)
    upper = np.triu_indices(s.shape[0], k=1)
    return spearman((s @ s.T)[upper], (t @ t.T)[upper])


def neighbour_overlap(student: Any, teacher: Any, k: int = 10) -> float:
    """Share of each text's ``k`` nearest neighbours (by cosine) that the student and the teacher have in common.

    .. math::  \\text{overlap@k} = \\frac{1}{N} \\sum_{i=1}^{N} \\frac{|\\mathcal{N}^S_k(i) \\cap
        \\mathcal{N}^T_k(i)|}{k}

    where :math:`\\mathcal{N}_k(i)` are the ``k`` rows other than ``i`` most similar to row ``i`` (ties broken by
    the lower row index). ``k`` is capped at ``N - 1``, so with ``k >= N - 1`` every row's neighbours are all the
    others and the overlap is 1. Widths may differ. Needs ``N >= 2``. Range [0, 1]; a random pair of embeddings
    scores about ``k / (N - 1)``.
    """
    k = _check_k(k)
    s, t = _pair(student, teacher, min_rows=2)
    k = min(k, s.shape[0] - 1)
    student_nn = _top_k(s, s, k, exclude_self=True)
    teacher_nn = _top_k(t, t, k, exclude_self=True)
    shared = [np.intersect1d(a, b, assume_unique=True).size for a, b in zip(student_nn, teacher_nn, strict=True)]
    return float(np.mean(shared) / k)


# --- retrieval ----------------------------------------------------------------------------------------------------


def rank_documents(query_emb: Any, doc_emb: Any, k: int | None = None) -> list[list[int]]:
    """For each query row, document indices ordered by decreasing cosine similarity (ties: lower index first).

    ``query_emb`` is ``[Q, D]`` and ``doc_emb`` ``[M, D]``; returns ``Q`` lists of ``min(k, M)`` ids (all ``M`` when
    ``k`` is ``None``).
    """
    queries = _matrix(query_emb, "query_emb")
    docs = _matrix(doc_emb, "doc_emb")
    if queries.shape[1] != docs.shape[1]:
        raise ValueError(
            f"queries and documents must have the same width; got query_emb {tuple(queries.shape)} and doc_emb "
            f"{tuple(docs.shape)}"
        )
    depth = docs.shape[0] if k is None else min(_check_k(k), docs.shape[0])
    return _top_k(_unit_rows(queries), _unit_rows(docs), depth).tolist()


def ranking_scores(ranked: Sequence[Iterable[int]], relevant: Sequence[Iterable[int]], k: int = 10) -> dict:
    """nDCG@k and recall@k of ranked document-id lists against sets of relevant ids (binary relevance).

    For one query with ranked ids ``d_1, d_2, ...`` (only the first ``k`` count; a shorter list is fine) and
    relevant set ``R``, with ``rel_r = 1`` if ``d_r`` is in ``R`` else 0:

    .. math::
        \\text{DCG@k} = \\sum_{r=1}^{k} \\frac{rel_r}{\\log_2(r + 1)}, \\qquad
        \\text{IDCG@k} = \\sum_{r=1}^{\\min(k, |R|)} \\frac{1}{\\log_2(r + 1)}, \\qquad
        \\text{nDCG@k} = \\frac{\\text{DCG@k}}{\\text{IDCG@k}}

    .. math::  \\text{recall@k} = \\frac{|\\{d_1, \\dots, d_k\\} \\cap R|}{|R|}

    Both are averaged over the queries; queries with an empty ``R`` are skipped (they cannot be scored), and if
    none is left that is a ``ValueError``. An id repeated within a query's top ``k`` is a ``ValueError`` (it would
    be counted twice). Note that recall@k cannot reach 1 when ``|R| > k``, while nDCG@k can.

    Returns:
        ``{"ndcg@<k>": float, "recall@<k>": float}``, e.g. ``{"ndcg@10": ..., "recall@10": ...}``.
    """
    k = _check_k(k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))  # 1/log2(r+1) for r = 1..k
    ndcgs: list[float] = []
    recalls: list[float] = []
    for top, wanted in _scored_queries(ranked, relevant, k):
        gains = np.array([doc in wanted for doc in top], dtype=np.float64)
        dcg = float(np.dot(gains, discounts[: gains.size]))
        ideal = float(discounts[: min(k, len(wanted))].sum())
        ndcgs.append(dcg / ideal)
        recalls.append(float(gains.sum()) / len(wanted))
    return {f"ndcg@{k}": float(np.mean(ndcgs)), f"recall@{k}": float(np.mean(recalls))}


def _scored_queries(
    ranked: Sequence[Iterable[int]], relevant: Sequence[Iterable[int]], k: int
) -> list[tuple[list[int], set[int]]]:
    """``(top k ids, relevant ids)`` of every query that has a relevant id, after the checks both metrics share."""
    ranked, relevant = list(ranked), list(relevant)
    if len(ranked) != len(relevant):
        raise ValueError(f"need one ranked list and one relevant set per query; got {len(ranked)} and {len(relevant)}")
    scored = []
    for query, (ids, wanted) in enumerate(zip(ranked, relevant, strict=True)):
        wanted = {int(doc) for doc in wanted}
        if not wanted:
            continue
        top = [int(doc) for doc in ids][:k]
        if len(set(top)) != len(top):
            raise ValueError(f"query {query}: a document id is repeated in its top {k}: {top}")
        scored.append((top, wanted))
    if not scored:
        raise ValueError("no query has a relevant document, so nothing can be scored")
    return scored


def mean_reciprocal_rank(ranked: Sequence[Iterable[int]], relevant: Sequence[Iterable[int]], k: int = 10) -> float:
    """MRR@k of ranked document-id lists: the mean over queries of ``1 / r``, where ``r`` is the rank (from 1) of
    the first relevant id among the top ``k``, or 0 when none is there.

    Same input rules as :func:`ranking_scores`: queries with an empty relevant set are skipped, a repeated id in a
    query's top ``k`` is a ``ValueError``.
    """
    k = _check_k(k)
    reciprocal = [next((1.0 / rank for rank, doc in enumerate(top, 1) if doc in wanted), 0.0)
                  for top, wanted in _scored_queries(ranked, relevant, k)]
    return float(np.mean(reciprocal))


def rank_candidates(scores: Any, positive: int = 0) -> list[list[int]]:
    """Candidate ids of each row of ``scores`` ``[B, C]`` ordered best first, with **pessimistic ties**: the
    ``positive`` candidate is placed after every candidate that scores the same, so a model that scores all
    candidates equally gets no credit for the positive's position in the list. Other ties: lower id first."""
    values = _matrix(scores, "scores")
    is_positive = np.zeros(values.shape[1])
    is_positive[positive] = 1.0
    ids = np.arange(values.shape[1])
    return [np.lexsort((ids, is_positive, -row)).tolist() for row in values]


def retrieval_scores(query_emb: Any, doc_emb: Any, relevant: Sequence[Iterable[int]], k: int = 10) -> dict:
    """Rank the documents for each query by cosine similarity (:func:`rank_documents`; ties: lower index first)
    and score the top ``k`` with :func:`ranking_scores`: ``{"ndcg@<k>": ..., "recall@<k>": ...}``, means over the
    queries that have at least one relevant document.

    ``query_emb`` is ``[Q, D]``, ``doc_emb`` ``[M, D]``, and ``relevant[q]`` the ids (rows of ``doc_emb``) relevant
    to query ``q``.
    """
    k = _check_k(k)
    relevant = list(relevant)
    ranked = rank_documents(query_emb, doc_emb, k)
    if len(ranked) != len(relevant):
        raise ValueError(f"need one relevant set per query; got {len(relevant)} sets for {len(ranked)} queries")
    return ranking_scores(ranked, relevant, k)


def retrieval_task(
    split: str | None = "test", max_queries: int | None = None, seed: int = 0
) -> tuple[list[str], list[str], list[set[int]]]:
    """A real retrieval task from the bundled standard-library docstring corpus (:func:`hf_distill.data.load_corpus`).

    A docstring with several paragraphs is stored as several passages that share a ``qualname``. For every
    qualname with at least two passages in the split:

    * the **query** is its first passage in dataset order (usually the docstring's summary paragraph);
    * its **relevant documents** are the other passages of the same qualname, i.e. the rest of the same docstring.

    The **document collection** is every passage of the split that is not a query, in dataset order: the relevant
    passages of all queries plus all single-passage docstrings, so the distractors are real documentation of other
    objects (often from the same module). A query's text never appears among the documents.

    Args:
        split: ``"test"``, ``"train"`` or ``None`` (whole corpus), as in :func:`~hf_distill.data.load_corpus`.
        max_queries: keep only the first ``max_queries`` queries in sorted-qualname order. Their relevant
            documents keep their ids and the document collection stays whole, so scores stay comparable.
        seed: the corpus split seed (which qualnames fall into the test split).

    Returns:
        ``(queries, docs, relevant)``: query texts sorted by qualname, document texts, and for each query the set
        of indices into ``docs`` that are relevant to it (never empty). Deterministic for given arguments.
    """
    from hf_distill.data import load_corpus

    if max_queries is not None and (
        isinstance(max_queries, bool) or not isinstance(max_queries, (int, np.integer)) or max_queries < 1
    ):
        raise ValueError(f"max_queries must be None or a positive integer, got {max_queries!r}")

    columns = load_corpus(split, seed=seed).with_format("arrow")
    texts: list[str] = columns["text"].to_pylist()
    qualnames: list[str] = columns["qualname"].to_pylist()

    rows_of: dict[str, list[int]] = {}
    for row, name in enumerate(qualnames):
        rows_of.setdefault(name, []).append(row)
    grouped = {name: rows for name, rows in rows_of.items() if len(rows) >= 2}
    query_rows = {rows[0] for rows in grouped.values()}

    doc_id: dict[int, int] = {}  # corpus row -> index into docs
    docs: list[str] = []
    for row, text in enumerate(texts):
        if row not in query_rows:
            doc_id[row] = len(docs)
            docs.append(text)

    names = sorted(grouped)
    if max_queries is not None:
        names = names[: int(max_queries)]
    queries = [texts[grouped[name][0]] for name in names]
    relevant = [{doc_id[row] for row in grouped[name][1:]} for name in names]
    return queries, docs, relevant
