"""hf_distill.embedding_metrics and the embedding_fidelity / retrieval evaluate modules: hand-computed values,
invariances, agreement between the modules and the pure functions, and the corpus retrieval task."""

from __future__ import annotations

import doctest
import math
import re
import socket

import numpy as np
import pytest
import torch

from hf_distill import metrics
from hf_distill.data import load_corpus
from hf_distill.embedding_metrics import (
    mean_cosine,
    neighbour_overlap,
    rank_documents,
    ranking_scores,
    retrieval_scores,
    retrieval_task,
    similarity_spearman,
    spearman,
)

LOG2_3 = math.log2(3)


def _on_circle(degrees, width: int = 2) -> np.ndarray:
    """Unit vectors at the given angles in the plane, padded with zero columns up to ``width``."""
    radians = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    points = np.stack([np.cos(radians), np.sin(radians)], axis=1)
    return np.pad(points, ((0, 0), (0, width - 2)))


# Four points on a circle. Between two of them the cosine is cos(angle difference), which falls as the difference
# grows (all differences here are below 180 degrees), so "more similar" simply means "closer in angle".
#   teacher angles 0, 10, 30, 70:  differences (0,1)=10 (0,2)=30 (0,3)=70 (1,2)=20 (1,3)=60 (2,3)=40
#   student angles 0, 45, 20, 80:  differences (0,1)=45 (0,2)=20 (0,3)=80 (1,2)=25 (1,3)=35 (2,3)=60
# No two pairs tie within either model.
TEACHER_4 = _on_circle([0, 10, 30, 70])
STUDENT_4 = _on_circle([0, 45, 20, 80], width=3)  # a different width on purpose


@pytest.fixture(scope="module")
def retrieval():
    return metrics.load("retrieval")


@pytest.fixture(scope="module")
def fidelity():
    return metrics.load("embedding_fidelity")


@pytest.fixture(scope="module")
def task():
    return retrieval_task()


# --- mean_cosine --------------------------------------------------------------------------------------------------


def test_mean_cosine_by_hand():
    student = [[1.0, 0.0], [0.0, 1.0]]
    teacher = [[1.0, 1.0], [0.0, 2.0]]
    # row 0: (1*1 + 0*1) / (1 * sqrt 2) = 1/sqrt 2; row 1: 2 / (1 * 2) = 1; mean = (1/sqrt 2 + 1) / 2 = 0.8536
    assert mean_cosine(student, teacher) == pytest.approx((1 / math.sqrt(2) + 1) / 2)
    # opposite rows: cosine -1 each
    assert mean_cosine(np.eye(3), -2 * np.eye(3)) == pytest.approx(-1.0)
    # a torch tensor (any float dtype) gives the numpy value
    assert mean_cosine(torch.tensor(student, dtype=torch.bfloat16), torch.tensor(teacher)) == pytest.approx(
        (1 / math.sqrt(2) + 1) / 2
    )


def test_mean_cosine_needs_equal_shapes():
    with pytest.raises(ValueError, match=r"student \(2, 2\) and teacher \(2, 3\)"):
        mean_cosine(np.ones((2, 2)), np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(2, 2\)"):
        mean_cosine(np.ones((3, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="2-D"):
        mean_cosine(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        mean_cosine([[math.nan, 1.0]], [[1.0, 1.0]])


# --- Spearman -----------------------------------------------------------------------------------------------------


def test_spearman_with_ties_uses_average_ranks():
    # x = [1, 2, 2, 3] has ranks [1, 2.5, 2.5, 4]; y = [1, 2, 3, 4] has ranks [1, 2, 3, 4]. Centred (mean 2.5):
    # [-1.5, 0, 0, 1.5] and [-1.5, -0.5, 0.5, 1.5]; dot = 2.25 + 2.25 = 4.5; squared norms 4.5 and 5
    # rho = 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10) = 0.9487
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(3 / math.sqrt(10))
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert math.isnan(spearman([5, 5, 5], [1, 2, 3]))  # a constant sample has no ranking


def test_spearman_matches_scipy_on_random_data_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, size=40)  # many ties
    y = x + rng.integers(0, 4, size=40)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_similarity_spearman_identical_is_one():
    rng = np.random.default_rng(1)
    embeddings = rng.standard_normal((12, 5))
    assert similarity_spearman(embeddings, embeddings) == pytest.approx(1.0)
    assert similarity_spearman(torch.tensor(embeddings), embeddings.copy()) == pytest.approx(1.0)


def test_similarity_spearman_order_reversing_is_minus_one():
    # teacher angles 0, 10, 30: differences (0,1)=10 (0,2)=30 (1,2)=20 -> similarity order (0,1) > (1,2) > (0,2)
    # student angles 0, 90, 30: differences (0,1)=90 (0,2)=30 (1,2)=60 -> similarity order (0,2) > (1,2) > (0,1)
    # every pair's rank is mirrored, so rho = -1
    teacher = _on_circle([0, 10, 30])
    student = _on_circle([0, 90, 30], width=4)
    assert similarity_spearman(student, teacher) == pytest.approx(-1.0)


def test_similarity_spearman_by_the_rank_difference_formula():
    # Similarity ranks (1 = least similar = largest angle difference), pairs in the order (0,1) (0,2) (0,3) (1,2)
    # (1,3) (2,3):
    #   teacher differences 10 30 70 20 60 40 -> ranks 6 4 1 5 2 3
    #   student differences 45 20 80 25 35 60 -> ranks 3 6 1 5 4 2
    #   d = 3 -2 0 0 -2 1, sum d^2 = 9 + 4 + 0 + 0 + 4 + 1 = 18, n = 6 pairs
    #   rho = 1 - 6 * 18 / (6 * (36 - 1)) = 1 - 108 / 210 = 17 / 35 = 0.4857
    assert similarity_spearman(STUDENT_4, TEACHER_4) == pytest.approx(17 / 35)
    assert similarity_spearman(TEACHER_4, STUDENT_4) == pytest.approx(17 / 35)  # symmetric


def test_similarity_spearman_needs_three_rows_and_equal_counts():
    with pytest.raises(ValueError, match="at least 3 rows"):
        similarity_spearman(np.eye(2), np.eye(2))
    with pytest.raises(ValueError, match=r"same number of rows.*\(4, 3\).*\(3, 3\)"):
        similarity_spearman(np.ones((4, 3)), np.eye(3))


# --- neighbour overlap --------------------------------------------------------------------------------------------


def test_neighbour_overlap_identical_is_one():
    rng = np.random.default_rng(2)
    embeddings = rng.standard_normal((20, 6))
    assert neighbour_overlap(embeddings, embeddings, k=5) == 1.0
    assert neighbour_overlap(embeddings, embeddings) == 1.0


def test_neighbour_overlap_by_hand():
    # 2 nearest neighbours (smallest angle differences, the row itself excluded):
    #   row  teacher (0, 10, 30, 70)        student (0, 45, 20, 80)        shared
    #   0    1 (10), 2 (30)                 2 (20), 1 (45)                 {1, 2}  2
    #   1    0 (10), 2 (20)                 2 (25), 3 (35)                 {2}     1
    #   2    1 (20), 0 (30)                 0 (20), 1 (25)                 {0, 1}  2
    #   3    2 (40), 1 (60)                 1 (35), 2 (60)                 {1, 2}  2
    # overlap@2 = (2 + 1 + 2 + 2) / 4 / 2 = 7 / 8
    assert neighbour_overlap(STUDENT_4, TEACHER_4, k=2) == pytest.approx(7 / 8)
    # nearest neighbour only: teacher 1, 0, 1, 2 and student 2, 2, 0, 1 never agree
    assert neighbour_overlap(STUDENT_4, TEACHER_4, k=1) == 0.0
    # k = N - 1 = 3 (or more, capped at 3): the neighbours are all the other rows
    assert neighbour_overlap(STUDENT_4, TEACHER_4, k=3) == 1.0
    assert neighbour_overlap(STUDENT_4, TEACHER_4, k=10) == 1.0


def test_neighbour_overlap_rejects_bad_k():
    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            neighbour_overlap(TEACHER_4, TEACHER_4, k=k)


def test_fidelity_metrics_ignore_positive_row_scaling():
    rng = np.random.default_rng(3)
    student, teacher = rng.standard_normal((30, 8)), rng.standard_normal((30, 8))
    narrow = rng.standard_normal((30, 5))
    scale_s = rng.uniform(0.01, 100.0, size=(30, 1))
    scale_t = rng.uniform(0.01, 100.0, size=(30, 1))
    assert mean_cosine(student * scale_s, teacher * scale_t) == pytest.approx(mean_cosine(student, teacher))
    for a, b in ((student, teacher), (narrow, teacher)):
        assert similarity_spearman(a * scale_s, b * scale_t) == pytest.approx(similarity_spearman(a, b))
        assert neighbour_overlap(a * scale_s, b * scale_t, k=4) == neighbour_overlap(a, b, k=4)
    # and random embeddings are far from the teacher: overlap near k / (N - 1) = 4 / 29, correlation near 0
    assert neighbour_overlap(student, teacher, k=4) < 0.4
    assert abs(similarity_spearman(student, teacher)) < 0.3


# --- retrieval ----------------------------------------------------------------------------------------------------


def test_ranking_scores_by_hand():
    # query A: ranked [2, 0, 1], relevant {0, 1}, k = 3
    #   DCG  = 0/log2(2) + 1/log2(3) + 1/log2(4) = 0.6309 + 0.5
    #   IDCG = 1/log2(2) + 1/log2(3) = 1 + 0.6309 (min(3, 2) = 2 ideal ones)
    #   nDCG = (1/log2(3) + 1/2) / (1 + 1/log2(3)) = 0.6934; recall = 2 / 2 = 1
    ndcg_a = (1 / LOG2_3 + 1 / 2) / (1 + 1 / LOG2_3)
    out = ranking_scores([[2, 0, 1]], [{0, 1}], k=3)
    assert out == {"ndcg@3": pytest.approx(ndcg_a), "recall@3": pytest.approx(1.0)}
    # query B: ranked [3, 4, 5], relevant {5, 9}: DCG = 1/log2(4) = 0.5, IDCG = 1 + 1/log2(3); recall = 1/2
    ndcg_b = 0.5 / (1 + 1 / LOG2_3)
    # query C has no relevant document: skipped, so the means are over A and B only
    out = ranking_scores([[2, 0, 1], [3, 4, 5], [7, 8, 9]], [{0, 1}, [5, 9], set()], k=3)
    assert out["ndcg@3"] == pytest.approx((ndcg_a + ndcg_b) / 2)
    assert out["recall@3"] == pytest.approx((1.0 + 0.5) / 2)
    # k = 1: only doc 2 counts, which is not relevant
    assert ranking_scores([[2, 0, 1]], [{0, 1}], k=1) == {"ndcg@1": 0.0, "recall@1": 0.0}
    # more relevant documents than k: both top-2 relevant -> DCG = IDCG = 1 + 1/log2(3), nDCG = 1; recall = 2/3
    out = ranking_scores([[0, 1, 5]], [{0, 1, 2}], k=2)
    assert out == {"ndcg@2": pytest.approx(1.0), "recall@2": pytest.approx(2 / 3)}
    # a list shorter than k is fine: ranked [4], relevant {4}, k = 10 -> nDCG 1, recall 1
    assert ranking_scores([[4]], [{4}]) == {"ndcg@10": 1.0, "recall@10": 1.0}


def test_ranking_scores_rejects_bad_input():
    with pytest.raises(ValueError, match="repeated"):
        ranking_scores([[1, 1, 2]], [{1}], k=3)
    ranking_scores([[1, 2, 1]], [{1}], k=2)  # a repeat beyond the cut-off does not matter
    with pytest.raises(ValueError, match="no query has a relevant document"):
        ranking_scores([[1, 2]], [set()])
    with pytest.raises(ValueError, match="one ranked list and one relevant set per query"):
        ranking_scores([[1, 2]], [{1}, {2}])


def test_rank_documents_orders_by_cosine_and_breaks_ties_by_index():
    # cosines with the query (1, 0): doc 0 -> 0, doc 1 -> 1, doc 2 -> 1 (same direction, longer), doc 3 -> 1/sqrt 2
    docs = [[0.0, 1.0], [1.0, 0.0], [2.0, 0.0], [1.0, 1.0]]
    assert rank_documents([[1.0, 0.0]], docs) == [[1, 2, 3, 0]]
    # query (0, -1): cosines -1, 0, 0, -1/sqrt 2 -> docs 1 and 2 tie at 0, the lower index first
    assert rank_documents([[1.0, 0.0], [0.0, -1.0]], docs, k=2) == [[1, 2], [1, 2]]
    with pytest.raises(ValueError, match="same width"):
        rank_documents(np.ones((1, 3)), docs)


def test_retrieval_scores_by_hand():
    # query at 0 degrees; documents at 90, 10, 45, 0 degrees -> ranking [3, 1, 2, 0]
    query = _on_circle([0])
    docs = _on_circle([90, 10, 45, 0])
    # relevant {2} sits at rank 3: nDCG@3 = (1/log2(4)) / (1/log2(2)) = 0.5, recall@3 = 1; at k = 2 both are 0
    assert retrieval_scores(query, docs, [{2}], k=3) == {"ndcg@3": pytest.approx(0.5), "recall@3": 1.0}
    assert retrieval_scores(query, docs, [{2}], k=2) == {"ndcg@2": 0.0, "recall@2": 0.0}
    # relevant {0, 3}: rank 1 hit, rank 4 hit beyond k = 3 -> DCG = 1, IDCG = 1 + 1/log2(3); recall = 1/2
    out = retrieval_scores(torch.tensor(query), torch.tensor(docs), [{0, 3}], k=3)
    assert out == {"ndcg@3": pytest.approx(1 / (1 + 1 / LOG2_3)), "recall@3": pytest.approx(0.5)}


# --- the evaluate modules -----------------------------------------------------------------------------------------


def test_new_modules_are_available_and_load_with_the_network_cut(monkeypatch):
    assert {"embedding_fidelity", "retrieval"} <= set(metrics.available())

    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    out = metrics.load("retrieval").compute(predictions=[[2, 0, 1]], references=[[0, 1]], k=3)
    assert out["ndcg@3"] == pytest.approx((1 / LOG2_3 + 1 / 2) / (1 + 1 / LOG2_3))
    out = metrics.load("embedding_fidelity").compute(predictions=STUDENT_4.tolist(), references=TEACHER_4.tolist(), k=2)
    assert out == {"similarity_spearman": pytest.approx(17 / 35), "neighbour_overlap@2": pytest.approx(7 / 8)}


@pytest.mark.parametrize("name", ["embedding_fidelity", "retrieval"])
def test_docstring_examples_run(name, fidelity, retrieval):
    module = {"embedding_fidelity": fidelity, "retrieval": retrieval}[name]
    assert module.description and module.inputs_description and module.citation == ""
    test = doctest.DocTestParser().get_doctest(module.inputs_description, {}, name, None, 0)
    assert test.examples
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_retrieval_module_agrees_with_the_pure_functions(retrieval):
    rng = np.random.default_rng(4)
    queries, docs = rng.standard_normal((15, 6)), rng.standard_normal((40, 6))
    relevant = [set(rng.choice(40, size=int(rng.integers(0, 4)), replace=False).tolist()) for _ in range(15)]
    relevant[0] = {7}  # at least one scoreable query
    for k in (1, 5, 10):
        ranked = rank_documents(queries, docs, k=k)
        out = retrieval.compute(predictions=ranked, references=[sorted(ids) for ids in relevant], k=k)
        assert out == pytest.approx(retrieval_scores(queries, docs, relevant, k=k))
        assert out == pytest.approx(ranking_scores(ranked, relevant, k=k))
    # full rankings give the same scores as top-k ones
    full = retrieval.compute(predictions=rank_documents(queries, docs), references=[list(r) for r in relevant])
    assert full == pytest.approx(retrieval_scores(queries, docs, relevant))


def test_fidelity_module_agrees_with_the_pure_functions(fidelity):
    rng = np.random.default_rng(5)
    # float32 values, since the module stores its inputs as float32
    teacher = rng.standard_normal((25, 8)).astype(np.float32)
    student = (teacher + 0.7 * rng.standard_normal((25, 8))).astype(np.float32)
    narrow = rng.standard_normal((25, 5)).astype(np.float32)

    out = fidelity.compute(predictions=student.tolist(), references=teacher.tolist())
    assert out == {
        "mean_cosine": pytest.approx(mean_cosine(student, teacher)),
        "similarity_spearman": pytest.approx(similarity_spearman(student, teacher)),
        "neighbour_overlap@10": pytest.approx(neighbour_overlap(student, teacher, k=10)),
    }
    assert out["mean_cosine"] > 0.5 and out["similarity_spearman"] > 0.5  # a noisy copy is still close

    out = fidelity.compute(predictions=narrow.tolist(), references=teacher.tolist(), k=3)
    assert out == {  # different widths: no mean_cosine
        "similarity_spearman": pytest.approx(similarity_spearman(narrow, teacher)),
        "neighbour_overlap@3": pytest.approx(neighbour_overlap(narrow, teacher, k=3)),
    }


# --- the corpus retrieval task ------------------------------------------------------------------------------------


def test_retrieval_task_is_well_formed(task):
    queries, docs, relevant = task
    assert len(queries) == len(relevant) >= 100
    assert all(len(ids) >= 1 for ids in relevant)
    assert all(0 <= i < len(docs) for ids in relevant for i in ids)
    assert not set(queries) & set(docs)
    for earlier, later in zip(relevant, relevant[1:], strict=False):
        assert isinstance(earlier, set) and not earlier & later  # a passage belongs to one docstring
    assert retrieval_task() == task  # deterministic


def test_retrieval_task_matches_its_definition(task):
    """Rebuild the task from the corpus rows: queries are the first passage of each multi-passage qualname, in
    sorted-qualname order; docs are all other passages in corpus order; relevant = the query's other passages."""
    queries, docs, relevant = task
    corpus = load_corpus("test").with_format("arrow")
    texts, names = corpus["text"].to_pylist(), corpus["qualname"].to_pylist()
    qualname_of = dict(zip(texts, names, strict=True))
    query_names = [qualname_of[q] for q in queries]
    assert query_names == sorted(set(query_names))
    assert len(queries) + len(docs) == len(texts)
    query_set = set(queries)
    assert docs == [t for t in texts if t not in query_set]
    for query, name, ids in zip(queries, query_names, relevant, strict=True):
        passages = [t for t, n in zip(texts, names, strict=True) if n == name]
        assert passages[0] == query
        assert [docs[i] for i in sorted(ids)] == passages[1:]

    small_queries, small_docs, small_relevant = retrieval_task(max_queries=10)
    assert small_queries == queries[:10] and small_relevant == relevant[:10] and small_docs == docs
    with pytest.raises(ValueError, match="max_queries"):
        retrieval_task(max_queries=0)


def _tfidf(texts: list[str]) -> np.ndarray:
    """Bag-of-words TF-IDF rows, L2-normalised: counts of each lower-case word of the vocabulary that the texts
    themselves make up, times idf = log((1 + n) / (1 + document frequency)) + 1."""
    tokens = [re.findall(r"[a-z]+", text.lower()) for text in texts]
    vocabulary: dict[str, int] = {}
    for words in tokens:
        for word in words:
            vocabulary.setdefault(word, len(vocabulary))
    counts = np.zeros((len(texts), len(vocabulary)))
    for row, words in enumerate(tokens):
        for word in words:
            counts[row, vocabulary[word]] += 1
    idf = np.log((1 + len(texts)) / (1 + (counts > 0).sum(axis=0))) + 1
    weighted = counts * idf
    return weighted / np.maximum(np.linalg.norm(weighted, axis=1, keepdims=True), 1e-12)


def test_tfidf_retrieves_far_better_than_random_embeddings():
    # Measured on the test split (100 queries, 757 docs): TF-IDF nDCG@10 = 0.41; random Gaussian embeddings
    # 0.002 to 0.018 over seeds 0-4.
    queries, docs, relevant = retrieval_task(max_queries=100)
    vectors = _tfidf(queries + docs)
    tfidf = retrieval_scores(vectors[: len(queries)], vectors[len(queries) :], relevant)["ndcg@10"]
    noise = np.random.default_rng(0).standard_normal(vectors.shape[:1] + (64,))
    random = retrieval_scores(noise[: len(queries)], noise[len(queries) :], relevant)["ndcg@10"]
    assert random < 0.06
    assert tfidf > 0.25
    assert tfidf > 4 * random


def test_retrieval_evaluation_reuses_a_frozen_teachers_embeddings_from_the_memo():
    from hf_distill.embeddings import retrieval_evaluation

    class Encoder:  # deterministic stand-in: an embedding per text from its hash, counting the texts it encodes
        def __init__(self, seed):
            self.seed, self.encoded = seed, 0

        def encode(self, texts):
            self.encoded += len(texts)
            rows = [np.random.default_rng([self.seed, abs(hash(t)) % 2**32]).standard_normal(8) for t in texts]
            return np.stack(rows).astype(np.float32)

    student, teacher = Encoder(1), Encoder(2)
    memo = {}
    first = retrieval_evaluation(student, teacher, max_queries=5, memo=memo)
    once = teacher.encoded
    assert once > 5  # queries and the whole index
    second = retrieval_evaluation(student, teacher, max_queries=5, memo=memo)
    assert teacher.encoded == once and student.encoded == 2 * once  # the student is encoded again, the teacher not
    assert second == first
    retrieval_evaluation(student, teacher, max_queries=6, memo=memo)  # other queries: not taken from the memo
    assert teacher.encoded > once
    without = retrieval_evaluation(student, Encoder(2), max_queries=5)
    assert without == first
