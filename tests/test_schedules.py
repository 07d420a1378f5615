"""Schedules of objective weights and temperatures: documented values at chosen steps, validation, and the trainer
using and logging them."""

from __future__ import annotations

import math

import pytest
import torch

from hf_distill import DistillationConfig, DistillationTrainer, losses
from hf_distill.objectives import normalize_objective_specs
from hf_distill.schedules import Schedule, parse_schedule
from tests.helpers import config, lm_dataset, pad_collate, single_thread, tiny_gpt2

pytestmark = pytest.mark.usefixtures("single_thread")
assert single_thread  # imported for its fixture


@pytest.mark.parametrize(("spec", "expected"), [
    ({"schedule": "constant", "value": 2.0}, {0.0: 2.0, 0.5: 2.0, 1.0: 2.0}),
    ({"schedule": "linear", "start": 4.0, "end": 1.0}, {0.0: 4.0, 0.25: 3.25, 0.5: 2.5, 1.0: 1.0}),
    ({"schedule": "cosine", "start": 4.0, "end": 0.0},
     {0.0: 4.0, 0.25: 2.0 * (1 + math.cos(math.pi / 4)), 0.5: 2.0, 1.0: 0.0}),
    ({"schedule": "step", "values": [4.0, 2.0, 1.0], "boundaries": [0.3, 0.6]},
     {0.0: 4.0, 0.29: 4.0, 0.3: 2.0, 0.59: 2.0, 0.6: 1.0, 1.0: 1.0}),
])
def test_schedules_give_the_documented_values(spec, expected):
    schedule = parse_schedule(spec, "x")
    for progress, value in expected.items():
        assert schedule(progress) == pytest.approx(value, abs=1e-12), progress
    assert schedule(1.5) == schedule(1.0) and schedule(-1) == schedule(0.0)  # clamped to [0, 1]


def test_a_number_is_not_a_schedule():
    assert parse_schedule(3.0, "x") is None
    assert Schedule("linear", 1.0, 0.0).extremes() == (1.0, 0.0)


@pytest.mark.parametrize(("spec", "message"), [
    ({"name": "kl", "temperature": {"schedule": "linar", "start": 4, "end": 1}}, "Did you mean 'linear'"),
    ({"name": "kl", "temperature": {"schedule": "linear", "start": 4}}, "missing: ['end']"),
    ({"name": "kl", "temperature": {"schedule": "linear", "start": 4, "end": 0}}, "`temperature` must be a finite "
                                                                                 "number > 0"),
    ({"name": "kl", "weight": {"schedule": "linear", "start": 1, "end": -1}}, "weight must be a finite number >= 0"),
    ({"name": "kl", "temperature": {"schedule": "step", "values": [4, 2], "boundaries": [0.5, 0.7]}},
     "boundaries must be a list of 1 fractions"),
    ({"name": "kl", "temperature": {"schedule": "step", "values": [4, 2, 1], "boundaries": [0.7, 0.5]}},
     "increasing fractions"),
    ({"name": "kl", "chunk_size": {"schedule": "linear", "start": 4, "end": 8}}, "`chunk_size` of 'kl' cannot follow"),
    ({"name": "jsd", "beta": {"schedule": "linear", "start": 0.1, "end": 1.5}}, "`beta` must be a number in [0, 1]"),
])
def test_bad_schedules_are_refused_naming_the_key(spec, message):
    with pytest.raises(ValueError) as caught:
        normalize_objective_specs([spec])
    assert "`objectives[0]" in str(caught.value) and message in str(caught.value), str(caught.value)


KL_SCHEDULED = [{"name": "kl", "weight": {"schedule": "step", "values": [1.0, 0.5], "boundaries": [0.5]},
                 "temperature": {"schedule": "linear", "start": 4.0, "end": 1.0}},
                {"name": "ce", "weight": {"schedule": "linear", "start": 0.0, "end": 1.0}}]


def test_trainer_uses_and_logs_scheduled_values_per_step(tmp_path):
    args = config(tmp_path, objectives=KL_SCHEDULED, max_steps=4, per_device_train_batch_size=2, logging_steps=1)
    trainer = DistillationTrainer(model=tiny_gpt2(layers=1), teacher_model=tiny_gpt2(layers=2, seed=1), args=args,
                                  train_dataset=lm_dataset([8, 9, 7, 6, 10, 8, 9, 7]), data_collator=pad_collate)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [e["schedule/kl.temperature"] for e in logs] == pytest.approx([4.0, 3.25, 2.5, 1.75])
    assert [e["schedule/kl.weight"] for e in logs] == [1.0, 1.0, 0.5, 0.5]
    assert [e["schedule/ce.weight"] for e in logs] == pytest.approx([0.0, 0.25, 0.5, 0.75])


def test_the_loss_at_a_step_uses_that_steps_values(tmp_path):
    args = config(tmp_path, objectives=KL_SCHEDULED, max_steps=4)
    student, teacher = tiny_gpt2(layers=1), tiny_gpt2(layers=2, seed=1)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, data_collator=pad_collate)
    batch = pad_collate([lm_dataset([8, 6])[i] for i in range(2)])
    trainer.state.max_steps, trainer.state.global_step = 4, 2  # the third step: p = 0.5
    student.train()
    got = trainer.compute_loss(student, batch)
    with torch.no_grad():
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    expected = 0.5 * losses.kl_div(s, t, temperature=2.5, mask=mask) + 0.5 * losses.ce(s, labels, mask=mask)
    torch.testing.assert_close(got.detach(), expected, rtol=1e-5, atol=1e-6)


def test_config_accepts_schedules_as_json():
    args = DistillationConfig(output_dir="unused", objectives='[{"name": "kl", "temperature": {"schedule": "cosine", '
                              '"start": 3, "end": 1}}]', use_cpu=True, report_to="none")
    assert args.objectives[0]["temperature"] == {"schedule": "cosine", "start": 3, "end": 1}
