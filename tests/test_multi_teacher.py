"""Several teachers (`teacher_model` a list): the ensemble's signals are combined into one teacher's, by the rules
of docs/multi-teacher.md, checked here against hand-computed mixtures and losses."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from transformers import BertConfig, BertModel

from hf_distill import DistillationTrainer
from hf_distill.cache import ROW_COLUMN
from hf_distill.signals import Signals, combine_signals, mixture_logits, weighted_mean
from tests.helpers import config, lm_dataset, pad_collate, single_thread, tiny_bert_classifier, tiny_gpt2  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")

LENGTHS = [3, 12, 5, 9, 4, 11]


def _batch() -> dict[str, torch.Tensor]:
    data = lm_dataset(LENGTHS)
    return pad_collate([data[i] for i in range(len(data))])


def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]


def _eval_loss(trainer: DistillationTrainer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    trainer.model.eval()
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, batch)


def _trainer(tmp_path, teachers, objectives=None, **overrides) -> DistillationTrainer:
    args = config(tmp_path, objectives=objectives or [{"name": "kl", "weight": 1.0}], **overrides)
    return DistillationTrainer(model=tiny_gpt2(1, seed=1), teacher_model=teachers, args=args,
                               data_collator=pad_collate)


# ---- the pure combination rules --------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_mixture_logits_give_the_weighted_mixture_at_their_temperature(temperature):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 7, generator=g) * 3, torch.randn(4, 7, generator=g) * 3
    mixed = mixture_logits([a, b], [3.0, 1.0], temperature)  # weights normalised to 0.75, 0.25
    expected = 0.75 * torch.softmax(a / temperature, -1) + 0.25 * torch.softmax(b / temperature, -1)
    torch.testing.assert_close(torch.softmax(mixed / temperature, -1), expected)
    if temperature != 1.0:  # read at T = 1 instead, it is *not* the mixture at T = 1
        at_one = 0.75 * torch.softmax(a, -1) + 0.25 * torch.softmax(b, -1)
        assert (torch.softmax(mixed, -1) - at_one).abs().max() > 1e-3
    # weight 0: that teacher is left out entirely (no -inf arithmetic)
    torch.testing.assert_close(torch.softmax(mixture_logits([a, b], [1.0, 0.0]), -1), torch.softmax(a, -1))
    torch.testing.assert_close(weighted_mean([a, b], [1.0, 3.0]), 0.25 * a + 0.75 * b)
    with pytest.raises(ValueError, match="positive sum"):
        mixture_logits([a, b], [0.0, 0.0])


def test_combine_signals_rules():
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(3, dtype=torch.bool)
    one = Signals(embeddings=torch.randn(3, 4, generator=g), scores=torch.randn(3, 2, generator=g), mask=mask,
                  hidden_states=(torch.randn(3, 5, 4, generator=g),))
    two = Signals(embeddings=torch.randn(3, 4, generator=g), scores=torch.randn(3, 2, generator=g), mask=mask,
                  hidden_states=(torch.randn(3, 5, 4, generator=g),))
    combined = combine_signals([one, two], [0.2, 0.8])
    torch.testing.assert_close(combined.embeddings, 0.2 * one.embeddings + 0.8 * two.embeddings)
    torch.testing.assert_close(combined.scores, 0.2 * one.scores + 0.8 * two.scores)
    torch.testing.assert_close(combined.hidden_states[0], 0.2 * one.hidden_states[0] + 0.8 * two.hidden_states[0])
    assert combined.mask is mask
    wide = Signals(embeddings=torch.randn(3, 6, generator=g), mask=mask)
    concatenated = combine_signals([Signals(embeddings=one.embeddings, mask=mask), wide], [0.2, 0.8]).embeddings
    torch.testing.assert_close(concatenated, torch.cat([0.2**0.5 * one.embeddings, 0.8**0.5 * wide.embeddings], -1))
    deeper = Signals(hidden_states=(two.hidden_states[0], two.hidden_states[0]), mask=mask)
    with pytest.raises(ValueError, match=r"numbers of layers \(`teacher_model\[0\]`: 1, `teacher_model\[1\]`: 2"):
        combine_signals([Signals(hidden_states=one.hidden_states, mask=mask), deeper], [1, 1])


# ---- the trainer with several teachers ----------------------------------------------------------------------------


@pytest.mark.parametrize("combine", ["probs", "logits"])
def test_two_identical_teachers_give_the_loss_of_one(tmp_path, combine):
    teacher = tiny_gpt2(2, seed=2)
    objectives = [{"name": "kl", "weight": 0.7, "temperature": 2.0}, {"name": "ce", "weight": 0.3}]
    single = _trainer(tmp_path / "one", teacher, objectives)
    ensemble = _trainer(tmp_path / "two", [copy.deepcopy(teacher), copy.deepcopy(teacher)], objectives,
                        teacher_combine=combine)
    batch = _batch()
    torch.testing.assert_close(_eval_loss(ensemble, batch), _eval_loss(single, batch), atol=1e-6, rtol=1e-6)
    assert len(ensemble.teacher_models) == 2 and ensemble.teacher_model is ensemble.teacher_models[0]


def test_weights_are_respected_and_the_loss_is_kl_to_the_mixture(tmp_path):
    first, second = tiny_gpt2(2, seed=2), tiny_gpt2(2, hidden=48, seed=3)  # different widths, same vocabulary
    batch = _batch()
    mask = batch["labels"][:, 1:] != -100
    z1, z2 = _logits(first, batch), _logits(second, batch)
    trainer = _trainer(tmp_path / "mix", [first, second], teacher_weights=[3.0, 1.0])  # kl at T = 1
    combined = trainer.teacher_source(batch, frozenset({"logits"})).logits
    mixture = 0.75 * torch.softmax(z1, -1) + 0.25 * torch.softmax(z2, -1)
    torch.testing.assert_close(torch.softmax(combined, -1), mixture)
    # the loss by hand: mean over counted tokens of KL(mixture || p_student)
    log_s = torch.log_softmax(_logits(trainer.model, batch), -1)
    by_hand = (mixture * (mixture.log() - log_s)).sum(-1)[mask].mean()
    torch.testing.assert_close(_eval_loss(trainer, batch), by_hand)
    # weights [1, 0]: exactly the first teacher alone
    alone = _trainer(tmp_path / "alone", [first, second], teacher_weights=[1, 0])
    torch.testing.assert_close(_eval_loss(alone, batch), _eval_loss(_trainer(tmp_path / "first", first), batch))


def test_mixture_temperature_follows_the_objective(tmp_path, caplog):
    first, second = tiny_gpt2(2, seed=2), tiny_gpt2(2, seed=3)
    batch = _batch()
    mask = batch["labels"][:, 1:] != -100
    z1, z2 = _logits(first, batch), _logits(second, batch)
    objectives = [{"name": "kl", "weight": 1.0, "temperature": 2.0}]
    trainer = _trainer(tmp_path / "t2", [first, second], objectives, teacher_weights=[0.4, 0.6])
    assert trainer.teacher_source.temperature == 2.0  # unset: the objective's temperature
    mixture = 0.4 * torch.softmax(z1 / 2, -1) + 0.6 * torch.softmax(z2 / 2, -1)
    log_s = torch.log_softmax(_logits(trainer.model, batch) / 2, -1)
    by_hand = 4.0 * (mixture * (mixture.log() - log_s)).sum(-1)[mask].mean()  # T² · KL(mixture_T || p_s,T)
    torch.testing.assert_close(_eval_loss(trainer, batch), by_hand)
    with caplog.at_level(logging.WARNING):
        tempered = _trainer(tmp_path / "t1", [first, second], objectives, teacher_mix_temperature=1.0)
    assert "tempered again" in caplog.text
    assert (_eval_loss(tempered, batch) - by_hand).abs() > 1e-4  # mixing at T = 1 then tempering differs


def test_training_moves_only_the_student_and_evaluates_against_the_ensemble(tmp_path):
    teachers = [tiny_gpt2(2, seed=2), tiny_gpt2(2, seed=3)]
    for t in teachers:
        t.train()
    before = [copy.deepcopy(t.state_dict()) for t in teachers]
    student = tiny_gpt2(1, seed=1)
    student_before = copy.deepcopy(student.state_dict())
    args = config(tmp_path, per_device_train_batch_size=3, max_steps=2, learning_rate=1e-2,
                  objectives=[{"name": "kl", "weight": 1.0}, {"name": "ce", "weight": 0.5}], teacher_weights=[2, 1])
    trainer = DistillationTrainer(model=student, teacher_model=teachers, args=args, data_collator=pad_collate,
                                  train_dataset=lm_dataset(LENGTHS), eval_dataset=lm_dataset(LENGTHS[:3], seed=4))
    trainer.train()
    for teacher, state in zip(teachers, before, strict=True):
        assert not teacher.training
        for name, param in teacher.named_parameters():
            assert not param.requires_grad and param.grad is None
            assert torch.equal(param, state[name])
    assert any(not torch.equal(p, student_before[n]) for n, p in student.named_parameters())
    metrics = trainer.evaluate()
    assert "eval_kl_to_teacher" in metrics and metrics["eval_loss/kl"] > 0


def test_bad_ensembles_are_refused_before_training(tmp_path):
    for weights, match in (([1.0, -1.0], "numbers >= 0"), ([0, 0], "positive sum"), ("nope", "must be JSON"),
                           ([True, 1], "numbers >= 0"), ([], "non-empty")):
        with pytest.raises(ValueError, match="`teacher_weights`") as info:
            config(tmp_path, teacher_weights=weights)
        assert match in str(info.value)
    assert config(tmp_path, teacher_weights="[0.7, 0.3]").teacher_weights == [0.7, 0.3]
    with pytest.raises(ValueError, match="`teacher_combine` must be one of probs, logits, got 'prob'.*probs"):
        config(tmp_path, teacher_combine="prob")
    with pytest.raises(ValueError, match="`teacher_mix_temperature` must be a finite number > 0"):
        config(tmp_path, teacher_mix_temperature=0)
    student = tiny_gpt2(1, seed=1)
    with pytest.raises(ValueError, match=r"`teacher_weights` has 3 entries .* `teacher_model` has 2 teacher"):
        # paths that do not exist: the count is checked before anything is loaded
        DistillationTrainer(model=student, teacher_model=["missing/a", "missing/b"],
                            args=config(tmp_path, teacher_weights=[1, 1, 1]))
    with pytest.raises(ValueError, match=r"`teacher_model\[1\]`: The student's vocabulary \(64\) is larger"):
        DistillationTrainer(model=student, teacher_model=[tiny_gpt2(2), tiny_gpt2(2, vocab=48)], args=config(tmp_path))
    with pytest.raises(ValueError, match=r"`teacher_model\[2\]`: The student has 3 outputs but the teacher has 4"):
        DistillationTrainer(model=tiny_bert_classifier(1), args=config(tmp_path), teacher_model=[
            tiny_bert_classifier(seed=1), tiny_bert_classifier(seed=2), tiny_bert_classifier(num_labels=4)])
    with pytest.raises(ValueError, match=r"`teacher_model\[1\]`: `teacher_model` is the student itself"):
        DistillationTrainer(model=student, teacher_model=[tiny_gpt2(2), student], args=config(tmp_path))
    with pytest.raises(ValueError, match="`teacher_model` is an empty list"):
        DistillationTrainer(model=student, teacher_model=[], args=config(tmp_path))
    with pytest.raises(ValueError, match="`teacher_cache` is one cache but `teacher_model` has 2 teachers"):
        DistillationTrainer(model=student, teacher_model=[tiny_gpt2(2), tiny_gpt2(2)],
                            args=config(tmp_path, teacher_cache=str(tmp_path / "cache")))
    with pytest.raises(ValueError, match="`teacher_scores_column` stands for one teacher"):
        DistillationTrainer(model=student, teacher_model=[tiny_gpt2(2), tiny_gpt2(2)],
                            args=config(tmp_path, teacher_scores_column="scores"))
    assert not (tmp_path / "out").exists()


def test_options_for_several_teachers_warn_with_one(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        _trainer(tmp_path, tiny_gpt2(2), teacher_combine="logits")
    assert "`teacher_combine` only apply to several teachers" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # a weight for a teacher that is not a model: warned, not a crash
        trainer = DistillationTrainer(model=tiny_gpt2(1), args=config(tmp_path, objectives=["ce"], teacher_weights=[1]))
    assert "`teacher_weights` only apply to several teachers" in caplog.text and trainer.teacher_models == []


def _bert(hidden: int, seed: int) -> BertModel:
    torch.manual_seed(seed)
    return BertModel(BertConfig(vocab_size=64, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=2 * hidden, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0))


def test_embedding_teachers_are_averaged_or_concatenated_by_width(tmp_path):
    batch = {"input_ids": torch.tensor([[1, 5, 9, 2], [1, 7, 2, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 1],
                                                                                                       [1, 1, 1, 0]])}
    mask = batch["attention_mask"].unsqueeze(-1).float()

    def embedding(model: BertModel) -> torch.Tensor:  # mean pooling by hand
        with torch.no_grad():
            states = model(**batch).last_hidden_state
        return (states * mask).sum(1) / mask.sum(1)

    one, two, wide = _bert(16, 1), _bert(16, 2), _bert(24, 3)
    args = config(tmp_path, objectives=[{"name": "embedding_mse"}], teacher_weights=[0.25, 0.75])
    trainer = DistillationTrainer(model=_bert(8, 0), teacher_model=[one, two], args=args)
    combined = trainer.teacher_source(batch, frozenset({"embeddings"})).embeddings
    torch.testing.assert_close(combined, 0.25 * embedding(one) + 0.75 * embedding(two))
    assert trainer.objectives[0].objective.projection.out_features == 16
    mixed = DistillationTrainer(model=_bert(8, 0), teacher_model=[one, wide], args=args)
    combined = mixed.teacher_source(batch, frozenset({"embeddings"})).embeddings
    torch.testing.assert_close(combined, torch.cat([0.5 * embedding(one), 0.75**0.5 * embedding(wide)], -1))
    assert mixed.objectives[0].objective.projection.out_features == 40  # sized to the concatenation
    _eval_loss(mixed, batch)  # the projection and the concatenated teacher line up


# ---- one cache per teacher ---------------------------------------------------------------------------------------


def _cache(path, teacher, train, eval_data=None):
    from hf_distill.cache import cache_teacher

    return cache_teacher(teacher, train, path, eval_dataset=eval_data, data_collator=pad_collate, batch_size=3,
                         progress=False)


def test_one_cache_per_teacher_equals_the_live_ensemble(tmp_path):
    teachers = [tiny_gpt2(2, seed=2), tiny_gpt2(2, hidden=48, seed=3)]
    train, held_out = lm_dataset(LENGTHS), lm_dataset(LENGTHS[:3], seed=4)
    # the second cache holds only the training data: its rows are numbered as the first cache numbers them
    caches = [_cache(tmp_path / "a", teachers[0], train, held_out), _cache(tmp_path / "b", teachers[1], train)]
    objectives = [{"name": "kl", "weight": 0.7, "temperature": 2.0}, {"name": "ce", "weight": 0.3}]

    def trainer(name, teacher_model, cache=None, eval_dataset=None):
        args = config(tmp_path / name, objectives=objectives, teacher_weights=[3, 1], per_device_train_batch_size=3,
                      max_steps=2, learning_rate=1e-2, logging_steps=1, optim="sgd",
                      teacher_cache=None if cache is None else [str(c.path) for c in cache])
        return DistillationTrainer(model=tiny_gpt2(1, seed=1), teacher_model=teacher_model, args=args,
                                   data_collator=pad_collate, train_dataset=train, eval_dataset=eval_dataset)

    live = trainer("live", teachers)
    cached = trainer("cached", None, caches, eval_dataset=held_out)
    assert cached.teacher_model is None and [c.path for c in cached.teacher_caches] == [c.path for c in caches]
    batch = next(iter(cached.get_train_dataloader()))  # a batch with the row codes of both caches
    live_batch = {k: v for k, v in batch.items() if k != ROW_COLUMN}
    torch.testing.assert_close(_eval_loss(cached, batch), _eval_loss(live, live_batch), atol=1e-6, rtol=1e-6)
    live.train()
    cached.train()
    logged = [[e["loss"] for e in t.state.log_history if "loss" in e] for t in (live, cached)]
    assert logged[1] == pytest.approx(logged[0], rel=1e-5, abs=1e-6)
    # held-out data is in the first cache only: evaluated without teacher signals (no live teacher), with a warning
    assert "eval_loss/kl" not in cached.evaluate()
    # with the teachers given too, each is checked against its cache, and uncached data runs them live
    both = trainer("both", teachers, caches, eval_dataset=held_out)
    assert "eval_loss/kl" in both.evaluate()


def test_a_stale_cache_among_several_is_refused_naming_its_index(tmp_path):
    from hf_distill.cache import StaleCacheError

    teachers = [tiny_gpt2(2, seed=2), tiny_gpt2(2, seed=3)]
    train = lm_dataset(LENGTHS)
    fresh, other_data = _cache(tmp_path / "a", teachers[0], train), _cache(tmp_path / "b", teachers[1],
                                                                          lm_dataset(LENGTHS, seed=9))
    args = config(tmp_path / "run", objectives=["kl"], teacher_cache=[str(fresh.path), str(other_data.path)])
    with pytest.raises(StaleCacheError, match=r"`teacher_cache\[1\]`: the training data does not match any split"):
        DistillationTrainer(model=tiny_gpt2(1), args=args, data_collator=pad_collate, train_dataset=train)
    # a cache built with another teacher's weights
    args = config(tmp_path / "run", objectives=["kl"], teacher_cache=[str(fresh.path), str(fresh.path)])
    with pytest.raises(StaleCacheError, match=r"`teacher_cache\[1\]`: .* was built with another teacher"):
        DistillationTrainer(model=tiny_gpt2(1), teacher_model=teachers, args=args, data_collator=pad_collate,
                            train_dataset=train)
    with pytest.raises(ValueError, match=r"`teacher_cache` lists 2 caches but `teacher_model` has 3 teacher"):
        DistillationTrainer(model=tiny_gpt2(1), teacher_model=[*teachers, teachers[0]], args=args)
    with pytest.raises(ValueError, match="`teacher_cache` must be a cache folder, or a non-empty list"):
        config(tmp_path, teacher_cache=[])
    assert config(tmp_path, teacher_cache='["caches/a", "caches/b"]').teacher_cache == ["caches/a", "caches/b"]
    assert config(tmp_path, teacher_cache=[tmp_path / "a"]).teacher_cache == str(tmp_path / "a")  # a list of one


@pytest.mark.slow
def test_docs_example_runs(tmp_path):
    import re
    import subprocess
    import sys
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "multi-teacher.md").read_text()
    example = re.search(r"## Complete example.*?```python\n(.*?)```", page, re.S).group(1)
    (tmp_path / "example.py").write_text(example)
    result = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "2.0"
