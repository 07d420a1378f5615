"""DistillationTrainer behaviour: normalisation, teacher handling, logging, evaluation, vocabulary checks."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn
from transformers import BertModel

from hf_distill import DistillationTrainer, losses
from hf_distill.objectives import OBJECTIVES, Objective
from hf_distill.tasks.language import LanguageTask
from tests.helpers import config, lm_dataset, pad_collate, tiny_bert_classifier, tiny_gpt2

# Uneven lengths so that micro-batches of 2 are padded differently from one batch of 8.
LENGTHS = [3, 12, 5, 9, 4, 11, 7, 6]
KD_CE = [{"name": "kl", "weight": 0.7, "temperature": 2.0}, {"name": "ce", "weight": 0.3}]


def _one_step(tmp_path, batch_size: int, accumulation: int, trainer_cls=DistillationTrainer) -> nn.Module:
    student, teacher = tiny_gpt2(layers=1, seed=1), tiny_gpt2(layers=2, seed=2)
    args = config(
        tmp_path,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        objectives=KD_CE,
    )
    trainer = trainer_cls(
        model=student, teacher_model=teacher, args=args, train_dataset=lm_dataset(LENGTHS), data_collator=pad_collate
    )
    trainer.train()
    return student


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=False))


class _PerMicroBatchMean(DistillationTrainer):
    """The common bug: each micro-batch normalised by its own item count, then divided by the accumulation steps."""

    loss_is_scaled_for_ga = False

    def _get_num_items_in_batch(self, batch_samples, device):
        return None


def test_gradient_accumulation_matches_one_large_batch(tmp_path):
    initial = tiny_gpt2(layers=1, seed=1)
    big = _one_step(tmp_path / "big", batch_size=8, accumulation=1)
    accumulated = _one_step(tmp_path / "acc", batch_size=2, accumulation=4)
    assert _max_diff(big, initial) > 1e-3  # the step really moved the weights
    assert _max_diff(big, accumulated) < 1e-6
    # The test can fail: per-micro-batch means with uneven padding give a measurably different update.
    naive = _one_step(tmp_path / "naive", batch_size=2, accumulation=4, trainer_cls=_PerMicroBatchMean)
    assert _max_diff(big, naive) > 1e-4


def test_teacher_is_frozen_and_unchanged_and_student_trains(tmp_path):
    student, teacher = tiny_gpt2(layers=1, seed=1), tiny_gpt2(layers=2, seed=2)
    teacher.train()  # the trainer must put it in eval mode itself
    teacher_before = copy.deepcopy(teacher.state_dict())
    student_before = copy.deepcopy(student.state_dict())
    args = config(tmp_path, per_device_train_batch_size=4, max_steps=3, learning_rate=1e-2, objectives=KD_CE,
                  eval_strategy="steps", eval_steps=2)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=lm_dataset(LENGTHS),
        eval_dataset=lm_dataset(LENGTHS[:4], seed=5), data_collator=pad_collate,
    )
    trainer.train()
    assert trainer.teacher_model is teacher  # not wrapped (no DDP), same object
    assert not teacher.training
    for name, param in teacher.named_parameters():
        assert not param.requires_grad and param.grad is None, name
        assert torch.equal(param, teacher_before[name]), f"teacher weight {name} changed"
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in teacher.parameters()}
    assert any(not torch.equal(p, student_before[n]) for n, p in student.named_parameters())


def test_gradients_reach_only_the_student(tmp_path):
    student, teacher = tiny_gpt2(layers=1, seed=1), tiny_gpt2(layers=2, seed=2)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path, objectives=KD_CE))
    batch = pad_collate([lm_dataset(LENGTHS)[i] for i in range(4)])
    student.train()
    loss = trainer.compute_loss(student, batch)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


def test_loss_is_the_weighted_formula(tmp_path):
    """compute_loss equals 0.7·KL_T=2 + 0.3·CE computed directly from the two models' shifted logits."""
    student, teacher = tiny_gpt2(layers=1, seed=1), tiny_gpt2(layers=2, seed=2)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path, objectives=KD_CE))
    batch = pad_collate([lm_dataset(LENGTHS)[i] for i in range(4)])
    student.eval()
    with torch.no_grad():
        got = trainer.compute_loss(student, batch)
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    expected = 0.7 * losses.kl_div(s, t, temperature=2.0, mask=mask) + 0.3 * losses.ce(s, labels)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_components_are_logged_and_sum_to_the_loss(tmp_path):
    args = config(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=4,
                  logging_steps=2, objectives=KD_CE, eval_strategy="steps", eval_steps=4)
    trainer = DistillationTrainer(
        model=tiny_gpt2(layers=1, seed=1), teacher_model=tiny_gpt2(layers=2, seed=2), args=args,
        train_dataset=lm_dataset(LENGTHS * 2), eval_dataset=lm_dataset(LENGTHS, seed=3), data_collator=pad_collate,
    )
    trainer.train()
    train_logs = [r for r in trainer.state.log_history if "loss" in r and "train_runtime" not in r]
    assert len(train_logs) == 2
    for row in train_logs:
        assert row["loss/kl"] > 0 and row["loss/ce"] > 0
        assert row["loss"] == pytest.approx(row["loss/kl"] + row["loss/ce"], rel=1e-5)
    evals = [r for r in trainer.state.log_history if "eval_loss" in r]
    assert evals
    row = evals[-1]
    assert row["eval_loss"] == pytest.approx(row["eval_loss/kl"] + row["eval_loss/ce"], rel=1e-6)
    for key in ("eval_kl_to_teacher", "eval_perplexity", "eval_teacher_perplexity", "eval_top1_agreement"):
        assert key in row
    assert 0.0 <= row["eval_top1_agreement"] <= 1.0


def test_evaluation_metrics_match_direct_computation(tmp_path):
    student, teacher = tiny_gpt2(layers=1, seed=1), tiny_gpt2(layers=2, seed=2)
    eval_set = lm_dataset(LENGTHS, seed=4)
    args = config(tmp_path, per_device_eval_batch_size=3, objectives=[{"name": "kl"}])
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, eval_dataset=eval_set,
                                  data_collator=pad_collate)
    metrics = trainer.evaluate()
    batch = pad_collate([eval_set[i] for i in range(len(eval_set))])
    with torch.no_grad():
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    # Token-weighted over the whole set, although batches of 3 have different token counts.
    assert metrics["eval_kl_to_teacher"] == pytest.approx(losses.kl_div(s, t, mask=mask).item(), rel=1e-5)
    assert metrics["eval_loss"] == pytest.approx(losses.kl_div(s, t, mask=mask).item(), rel=1e-5)
    assert metrics["eval_perplexity"] == pytest.approx(torch.exp(losses.ce(s, labels)).item(), rel=1e-5)


def test_pure_kd_without_labels_counts_non_padding_tokens(tmp_path):
    data = lm_dataset(LENGTHS).remove_columns("labels")
    batch = pad_collate([data[i] for i in range(4)])
    mask = LanguageTask(causal=True).item_mask(batch)
    assert mask.sum().item() == sum(n - 1 for n in LENGTHS[:4])
    args = config(tmp_path, per_device_train_batch_size=4, max_steps=2, objectives=[{"name": "kl"}])
    trainer = DistillationTrainer(model=tiny_gpt2(1, seed=1), teacher_model=tiny_gpt2(2, seed=2), args=args,
                                  train_dataset=data, data_collator=pad_collate)
    trainer.train()
    args = config(tmp_path, objectives=[{"name": "ce"}])
    trainer = DistillationTrainer(model=tiny_gpt2(1, seed=1), teacher_model=tiny_gpt2(2, seed=2), args=args)
    with pytest.raises(ValueError, match="`ce` objective needs labels"):
        trainer.compute_loss(trainer.model, batch)


def test_hidden_states_are_requested_only_when_an_objective_needs_them(tmp_path):
    calls: list[dict] = []
    student = tiny_gpt2(layers=1, seed=1)
    original = student.forward

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    student.forward = spy
    batch = pad_collate([lm_dataset(LENGTHS)[i] for i in range(2)])
    trainer = DistillationTrainer(model=student, teacher_model=tiny_gpt2(2, seed=2), args=config(tmp_path))
    trainer.compute_loss(student, batch)
    assert not calls[-1].get("output_hidden_states") and not calls[-1].get("output_attentions")

    class LastHidden(Objective):
        name = "test_last_hidden_mse"
        requires = frozenset({"hidden_states"})

        def forward(self, student, teacher):
            return losses.embedding_mse(student.hidden_states[-1], teacher.hidden_states[-1]) * student.mask.sum()

    OBJECTIVES.register(LastHidden)
    try:
        args = config(tmp_path, objectives=[{"name": "test_last_hidden_mse"}])
        trainer = DistillationTrainer(model=student, teacher_model=tiny_gpt2(1, seed=2), args=args)
        loss = trainer.compute_loss(student, batch)
        assert calls[-1].get("output_hidden_states") is True
        assert torch.isfinite(loss)
    finally:
        del OBJECTIVES._items["test_last_hidden_mse"]


def test_objective_parameters_are_trained_and_saved(tmp_path):
    class Scaled(Objective):
        name = "test_scaled_kl"

        def __init__(self) -> None:
            super().__init__()
            self.log_scale = nn.Parameter(torch.zeros(()))

        def forward(self, student, teacher):
            scaled = student.logits * self.log_scale.exp()
            return losses.kl_div(scaled, teacher.logits, mask=student.mask, reduction="sum")

    OBJECTIVES.register(Scaled)
    try:
        args = config(tmp_path, per_device_train_batch_size=4, max_steps=3, learning_rate=0.1,
                      objectives=[{"name": "test_scaled_kl"}])
        trainer = DistillationTrainer(model=tiny_gpt2(1, seed=1), teacher_model=tiny_gpt2(2, seed=2), args=args,
                                      train_dataset=lm_dataset(LENGTHS), data_collator=pad_collate)
        trainer.train()
        learned = trainer.objectives[0].objective.log_scale.item()
        assert learned != 0.0
        trainer.save_model(str(tmp_path / "saved"))
        from safetensors.torch import load_file

        saved = load_file(str(tmp_path / "saved" / "distill_objectives.safetensors"))
        assert saved["0.objective.log_scale"].item() == pytest.approx(learned)
    finally:
        del OBJECTIVES._items["test_scaled_kl"]


def test_teacher_from_path_with_dtype(tmp_path):
    teacher = tiny_gpt2(layers=2, seed=2)
    teacher.save_pretrained(tmp_path / "teacher")
    args = config(tmp_path, teacher_dtype="bf16", per_device_train_batch_size=4, max_steps=1)
    trainer = DistillationTrainer(model=tiny_gpt2(1, seed=1), teacher_model=str(tmp_path / "teacher"), args=args,
                                  train_dataset=lm_dataset(LENGTHS), data_collator=pad_collate)
    assert trainer.teacher_model.dtype == torch.bfloat16
    assert not trainer.teacher_model.training
    trainer.train()
    assert trainer.state.log_history[-1]["train_loss"] > 0


def test_padded_teacher_vocabulary_is_compared_on_the_shared_range(tmp_path, caplog):
    student, teacher = tiny_gpt2(1, vocab=64, seed=1), tiny_gpt2(2, vocab=72, seed=2)
    with caplog.at_level(logging.WARNING):
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path))
    assert "padded beyond the student's (64)" in caplog.text
    batch = pad_collate([lm_dataset(LENGTHS)[i] for i in range(3)])
    with torch.no_grad():
        got = trainer.compute_loss(student, batch)
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1, :64]
    torch.testing.assert_close(got, losses.kl_div(s, t, mask=batch["labels"][:, 1:] != -100))


def test_vocabulary_and_label_mismatches_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"student's vocabulary \(72\) is larger than the teacher's \(64\)"):
        DistillationTrainer(model=tiny_gpt2(1, vocab=72), teacher_model=tiny_gpt2(2, vocab=64), args=config(tmp_path))
    with pytest.raises(ValueError, match="student has 3 outputs but the teacher has 4"):
        DistillationTrainer(model=tiny_bert_classifier(num_labels=3), teacher_model=tiny_bert_classifier(num_labels=4),
                            args=config(tmp_path))
    assert not (tmp_path / "out").exists()


def test_unknown_task_and_wrong_arguments(tmp_path):
    from transformers import BertConfig, BertForTokenClassification

    small = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    token_classifier = BertForTokenClassification(small)  # no adapter handles token classification yet
    with pytest.raises(ValueError, match="Could not detect the task"):
        DistillationTrainer(model=token_classifier, teacher_model=BertForTokenClassification(small),
                            args=config(tmp_path))
    headless = BertModel(small)  # a base model is an embedding model
    args = config(tmp_path, objectives=["embedding_cosine"])
    trainer = DistillationTrainer(model=headless, teacher_model=BertModel(small), args=args)
    assert trainer.task.name == "embedding"
    with pytest.raises(ValueError, match="does not handle the model"):
        args = config(tmp_path, task="classification")
        DistillationTrainer(model=tiny_gpt2(1), teacher_model=tiny_gpt2(2), args=args)
    with pytest.raises(ValueError, match="`teacher_model` is required"):
        DistillationTrainer(model=tiny_gpt2(1), args=config(tmp_path))
    from transformers import TrainingArguments

    with pytest.raises(TypeError, match="must be a DistillationConfig"):
        DistillationTrainer(model=tiny_gpt2(1), teacher_model=tiny_gpt2(2),
                            args=TrainingArguments(output_dir=str(tmp_path / "x"), report_to="none"))


def test_masked_lm_distils_only_the_labelled_positions(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    def mlm(layers, seed):
        torch.manual_seed(seed)
        return BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=layers,
                                          num_attention_heads=2, intermediate_size=64, hidden_dropout_prob=0.0,
                                          attention_probs_dropout_prob=0.0))

    student, teacher = mlm(1, 1), mlm(2, 2)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path))
    assert isinstance(trainer.task, LanguageTask) and not trainer.task.causal
    input_ids = torch.randint(1, 64, (3, 10), generator=torch.Generator().manual_seed(0))
    labels = torch.full_like(input_ids, -100)
    labels[:, [2, 7]] = input_ids[:, [2, 7]]
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    student.eval()
    with torch.no_grad():
        got = trainer.compute_loss(student, batch)
        s, t = student(input_ids=input_ids).logits, teacher(input_ids=input_ids).logits
    torch.testing.assert_close(got, losses.kl_div(s, t, mask=labels != -100))  # no shift, 6 positions
    with pytest.raises(ValueError, match="masked language model needs `labels`"):
        trainer.compute_loss(student, {"input_ids": input_ids})


def test_student_and_teacher_from_paths(tmp_path):
    tiny_gpt2(1, seed=1).save_pretrained(tmp_path / "student")
    tiny_gpt2(2, seed=2).save_pretrained(tmp_path / "teacher")
    trainer = DistillationTrainer(model=str(tmp_path / "student"), teacher_model=str(tmp_path / "teacher"),
                                  args=config(tmp_path, per_device_train_batch_size=4, max_steps=1),
                                  train_dataset=lm_dataset(LENGTHS), data_collator=pad_collate)
    assert trainer.model.config.n_layer == 1 and trainer.teacher_model.config.n_layer == 2
    trainer.train()


def test_different_tokenizers_are_refused(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    def word_tokenizer(words):
        vocab = {w: i for i, w in enumerate(["<pad>", *words])}
        return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")),
                                       pad_token="<pad>")

    tiny_gpt2(2, vocab=64, seed=2).save_pretrained(tmp_path / "teacher")
    word_tokenizer([f"t{i}" for i in range(40)]).save_pretrained(tmp_path / "teacher")
    student_tokenizer = word_tokenizer([f"s{i}" for i in range(40)])
    with pytest.raises(ValueError, match="tokenizer differs from the student's"):
        DistillationTrainer(model=tiny_gpt2(1, vocab=64), teacher_model=str(tmp_path / "teacher"),
                            args=config(tmp_path), processing_class=student_tokenizer)
    same = word_tokenizer([f"t{i}" for i in range(40)])
    DistillationTrainer(model=tiny_gpt2(1, vocab=64), teacher_model=str(tmp_path / "teacher"), args=config(tmp_path),
                        processing_class=same)


def test_teacher_compile_wraps_the_frozen_teacher(tmp_path):
    teacher = tiny_gpt2(2, seed=2)
    trainer = DistillationTrainer(model=tiny_gpt2(1, seed=1), teacher_model=teacher,
                                  args=config(tmp_path, teacher_compile=True))
    compiled = trainer.teacher_model
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule) and compiled._orig_mod is teacher
    assert trainer.teacher_source.model is compiled and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
