"""Vision: the `vision` task adapter (ViT, DeiT with its distillation token, a CNN student), `losses.dkd` and
`losses.pld` against hand computations, and tiny trainer runs (random configs, 8×8 images).

Expected loss values are computed by hand from the formulas in the docstrings (with `math`), never by the code
under test.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import (
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    ResNetConfig,
    ResNetForImageClassification,
)

from hf_distill import DistillationTrainer, losses
from hf_distill.objectives import normalize_objective_specs
from hf_distill.tasks import resolve_task
from tests.helpers import (  # noqa: F401  (single_thread: fixture)
    config,
    image_dataset,
    single_thread,
    tiny_bert_classifier,
    tiny_vit,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _softmax(xs: list[float]) -> list[float]:
    z = [math.exp(x) for x in xs]
    return [v / sum(z) for v in z]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


# ---- losses.dkd ---------------------------------------------------------------------------------------------------


def _dkd_by_hand(s: list[float], t: list[float], y: int, alpha: float, beta: float, temperature: float) -> float:
    ps, pt = _softmax([x / temperature for x in s]), _softmax([x / temperature for x in t])
    tckd = _kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
    others = [c for c in range(len(s)) if c != y]
    nckd = _kl(_softmax([t[c] / temperature for c in others]), _softmax([s[c] / temperature for c in others]))
    return temperature**2 * (alpha * tckd + beta * nckd)


def test_dkd_hand_value():
    s, t = [1.0, 0.0, 0.0], [1.0, 2.0, 0.0]
    # NCKD alone: p̂_s = (½, ½), p̂_t = (e²/(e² + 1), 1/(e² + 1)) = (0.880797, 0.119203)
    nckd = 0.880797 * math.log(0.880797 / 0.5) + 0.119203 * math.log(0.119203 / 0.5)
    value = losses.dkd(torch.tensor([s]), torch.tensor([t]), torch.tensor([0]), alpha=0.0, beta=1.0, temperature=1.0)
    assert value.item() == pytest.approx(nckd, rel=1e-5)
    for alpha, beta, temperature in [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (2.0, 0.0, 0.5)]:
        value = losses.dkd(torch.tensor([s]), torch.tensor([t]), torch.tensor([1]), alpha, beta, temperature)
        assert value.item() == pytest.approx(_dkd_by_hand(s, t, 1, alpha, beta, temperature), rel=1e-5)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_dkd_decomposes_classic_kd(temperature):
    """KL(p_t || p_s) = TCKD + (1 − p_t(y)) · NCKD (the paper's reformulation), so with alpha = 1 and
    beta = 1 − p_t(y), DKD is the classic KD."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(1, 5, generator=g) * 2, torch.randn(1, 5, generator=g) * 2
    y = torch.tensor([3])
    pt_y = torch.softmax(t / temperature, -1)[0, 3].item()
    value = losses.dkd(s, t, y, alpha=1.0, beta=1.0 - pt_y, temperature=temperature)
    assert value.item() == pytest.approx(losses.kl_div(s, t, temperature=temperature).item(), rel=1e-5)


def test_dkd_zero_mask_reduction_and_temperature_scaling():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    labels = torch.tensor([0, 5, -100, 2])
    assert losses.dkd(s, s, labels).item() == pytest.approx(0.0, abs=1e-6)
    mask = torch.tensor([True, False, True, True])
    # rows 1 (mask) and 2 (label -100) do not count
    expected = losses.dkd(s[[0, 3]], t[[0, 3]], labels[[0, 3]])
    assert losses.dkd(s, t, labels, mask=mask).item() == pytest.approx(expected.item(), rel=1e-6)
    assert losses.dkd(s, t, labels, mask=mask, reduction="sum").item() == pytest.approx(2 * expected.item(), rel=1e-6)
    # T² · (the loss of logits / T at T = 1)
    scaled = losses.dkd(s / 2, t / 2, labels, temperature=1.0)
    assert losses.dkd(s, t, labels, temperature=2.0).item() == pytest.approx(4 * scaled.item(), rel=1e-5)
    assert losses.dkd(s, t, torch.full((4,), -100)).item() == 0.0
    with pytest.raises(ValueError, match="`beta` must be"):
        losses.dkd(s, t, labels, beta=-1.0)
    with pytest.raises(ValueError, match="`labels` must be class ids"):
        losses.dkd(s, t, torch.tensor([0, 1, 2, 6]))
    with pytest.raises(ValueError, match="`temperature`"):
        losses.dkd(s, t, labels, temperature=0.0)


# ---- losses.pld ---------------------------------------------------------------------------------------------------


def test_pld_hand_value():
    """s = (2, 1, 0), t = (0, 1, 3), y = 0: ranking π = (0, 2, 1) (label, then teacher order);
    α = p_t at T = 1 of (0, 2, 1); ranked student logits (2, 0, 1);
    loss = α₁ · (log(e² + e⁰ + e¹) − 2) + α₂ · (log(e⁰ + e¹) − 0) + α₃ · 0."""
    pt = _softmax([0.0, 1.0, 3.0])
    expected = pt[0] * (math.log(math.exp(2) + 1 + math.exp(1)) - 2) + pt[2] * math.log(1 + math.exp(1))
    value = losses.pld(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[0.0, 1.0, 3.0]]), torch.tensor([0]))
    assert value.item() == pytest.approx(expected, rel=1e-6)
    # four classes with a teacher temperature: y = 2, teacher order of the rest 0, 3, 1
    s, t, T = [0.5, -1.0, 1.0, 0.0], [2.0, -1.0, 0.0, 1.0], 2.0
    pt = _softmax([x / T for x in t])
    ranked = [s[2], s[0], s[3], s[1]]
    weights = [pt[2], pt[0], pt[3], pt[1]]
    expected = sum(w * (math.log(sum(math.exp(x) for x in ranked[k:])) - ranked[k]) for k, w in enumerate(weights))
    value = losses.pld(torch.tensor([s]), torch.tensor([t]), torch.tensor([2]), temperature=T)
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_pld_edges():
    s = torch.tensor([[0.3, -0.2, 1.1]])
    # A teacher certain of the label: all weight on the first step, i.e. cross-entropy.
    confident = losses.pld(s, torch.tensor([[50.0, 0.0, 0.0]]), torch.tensor([0]))
    assert confident.item() == pytest.approx(losses.ce(s, torch.tensor([0])).item(), rel=1e-5)
    # T → 0 with a teacher preferring class 1 over the label 0: all weight on step 2, choosing class 1 among {1, 2}.
    cold = losses.pld(s, torch.tensor([[0.0, 5.0, 1.0]]), torch.tensor([0]), temperature=0.01)
    assert cold.item() == pytest.approx(math.log(math.exp(-0.2) + math.exp(1.1)) + 0.2, rel=1e-5)
    # Large T: uniform weights 1/C (ListMLE over the ranking, divided by C).
    hot = losses.pld(torch.zeros(1, 3), torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([0]), temperature=1e6)
    assert hot.item() == pytest.approx((math.log(3) + math.log(2)) / 3, rel=1e-5)
    # Translation invariance in the student's logits, and masking / -100.
    t = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
    both = torch.cat([s, s + 1.0])
    labels = torch.tensor([1, -100])
    assert losses.pld(both, t, labels).item() == pytest.approx(losses.pld(s, t[:1], labels[:1]).item(), rel=1e-6)
    assert losses.pld(both + 7.0, t, torch.tensor([1, 1]), mask=torch.tensor([False, True])).item() == \
        pytest.approx(losses.pld(s, t[1:], torch.tensor([1])).item(), rel=1e-5)


# ---- the vision task ---------------------------------------------------------------------------------------------


def tiny_deit(seed: int = 2) -> DeiTForImageClassificationWithTeacher:
    torch.manual_seed(seed)
    return DeiTForImageClassificationWithTeacher(DeiTConfig(
        image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def tiny_resnet(seed: int = 3) -> ResNetForImageClassification:
    torch.manual_seed(seed)
    return ResNetForImageClassification(ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16],
                                                     depths=[1, 1], num_labels=4))


def test_task_auto_detects_image_classifiers_and_not_text_classifiers():
    assert resolve_task("auto", model=tiny_vit()).name == "vision"
    assert resolve_task("auto", model=tiny_deit()).name == "vision"
    assert resolve_task("auto", model=tiny_resnet()).name == "vision"
    assert resolve_task("auto", model=tiny_bert_classifier()).name == "classification"
    assert resolve_task("auto", architecture="ConvNextForImageClassification").name == "vision"
    assert resolve_task("auto", architecture="BertForSequenceClassification").name == "classification"
    with pytest.raises(ValueError, match="does not handle"):
        resolve_task("vision", model=tiny_bert_classifier())
    with pytest.raises(ValueError, match="`pixel_values`"):
        resolve_task("vision", model=tiny_vit()).item_mask({"input_ids": torch.ones(2, 3)})


def test_vit_student_trains_with_kl_and_hidden_mse_teacher_untouched(tmp_path):
    student, teacher = tiny_vit(hidden=16, layers=2, seed=1), tiny_vit(hidden=32, layers=3, seed=0)
    teacher_before = copy.deepcopy(teacher.state_dict())
    student_before = copy.deepcopy(student.state_dict())
    args = config(tmp_path, per_device_train_batch_size=4, max_steps=3, learning_rate=1e-2,
                  objectives=[{"name": "kl", "temperature": 2.0}, {"name": "hidden_mse"}])
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=image_dataset(12),
                                  eval_dataset=image_dataset(8, seed=1))
    assert trainer.task.name == "vision"
    objective = trainer.objectives[1].objective
    assert objective.pairs == [(0, 0), (1, 2), (2, 3)]  # uniform: 2 → 3 layers, embeddings to embeddings
    # Gradients reach the student and the projections, never the teacher.
    student.train()
    batch = {k: torch.tensor(v) for k, v in image_dataset(4)[:4].items()}
    trainer.compute_loss(student, batch).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert all(p.grad is not None for p in objective.projections.parameters())
    student.zero_grad()
    objective.zero_grad()
    trainer.train()
    for name, param in teacher.named_parameters():
        assert torch.equal(param, teacher_before[name]), f"teacher weight {name} changed"
    assert any(not torch.equal(p, student_before[n]) for n, p in student.named_parameters())
    metrics = trainer.evaluate()
    for key in ("eval_accuracy", "eval_top1_agreement", "eval_kl_to_teacher", "eval_loss/hidden_mse"):
        assert math.isfinite(metrics[key]), key


def test_deit_distillation_token_hard_and_soft(tmp_path):
    student, teacher = tiny_deit(), tiny_vit(hidden=32, layers=2, seed=0)
    objectives = [{"name": "ce", "weight": 0.5}, {"name": "deit_distill", "weight": 0.5},
                  {"name": "deit_distill", "mode": "soft", "temperature": 2.0}]
    args = config(tmp_path, per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2, objectives=objectives)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=image_dataset(8),
                                  eval_dataset=image_dataset(4, seed=1))
    assert args.label_names == ["labels"]  # DeiT-with-teacher's forward takes no labels: the column is kept
    batch = {k: torch.tensor(v) for k, v in image_dataset(4)[:4].items()}
    terms, s, t = trainer.distillation_terms(student, batch)
    outputs = student(pixel_values=batch["pixel_values"])
    assert torch.allclose(s.logits, outputs.cls_logits) and torch.allclose(s.distillation_logits,
                                                                            outputs.distillation_logits)
    hard = losses.ce(outputs.distillation_logits, t.logits.argmax(-1), reduction="sum")
    soft = losses.kl_div(outputs.distillation_logits, t.logits, temperature=2.0, reduction="sum")
    assert terms["deit_distill"].item() == pytest.approx(0.5 * hard.item(), rel=1e-5)
    assert terms["deit_distill_1"].item() == pytest.approx(soft.item(), rel=1e-5)
    assert terms["ce"].item() == pytest.approx(0.5 * losses.ce(outputs.cls_logits, batch["labels"],
                                                               reduction="sum").item(), rel=1e-5)
    trainer.train()
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and "eval_loss/deit_distill" in metrics
    # the reported prediction is DeiT's own: the average of both heads
    sums = trainer.task.eval_sums(s, t)
    assert sums["accuracy"][0].item() == ((outputs.logits.argmax(-1) == batch["labels"]).sum().item())


def test_deit_distill_needs_a_distillation_head(tmp_path):
    args = config(tmp_path, objectives=[{"name": "deit_distill"}])
    trainer = DistillationTrainer(model=tiny_vit(seed=1), teacher_model=tiny_vit(seed=0), args=args)
    batch = {k: torch.tensor(v) for k, v in image_dataset(2)[:2].items()}
    with pytest.raises(ValueError, match="DeiTForImageClassificationWithTeacher"):
        trainer.distillation_terms(trainer.model, batch)
    with pytest.raises(ValueError, match="`mode` must be 'hard' or 'soft'"):
        normalize_objective_specs([{"name": "deit_distill", "mode": "medium"}])


def test_cnn_student_learns_vit_features_by_module_path(tmp_path):
    student, teacher = tiny_resnet(), tiny_vit(hidden=32, layers=2, seed=0)
    objectives = [{"name": "kl"}, {"name": "dkd", "weight": 0.5}, {"name": "pld", "weight": 0.5},
                  {"name": "feature_mse", "student_module": "resnet.encoder.stages.1",
                   "teacher_module": "vit.layers.1"}]
    args = config(tmp_path, per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2, objectives=objectives)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=image_dataset(8))
    feature = trainer.objectives[3].objective
    assert feature.projection.weight.shape == (32, 16)  # ResNet stage 2 has 16 channels, the ViT 32 dims
    batch = {k: torch.tensor(v) for k, v in image_dataset(4)[:4].items()}
    terms, s, t = trainer.distillation_terms(student, batch)
    assert s.features["resnet.encoder.stages.1"].shape == (4, 16, 1, 1)  # 8×8 image, two stride-2 stages after stem
    assert t.features["vit.layers.1"].shape == (4, 5, 32)  # 4 patches + the class token
    pooled_s = feature.projection(s.features["resnet.encoder.stages.1"].mean(dim=(2, 3)))
    expected = losses.hidden_mse(pooled_s, t.features["vit.layers.1"].mean(dim=1), reduction="sum")
    assert terms["feature_mse"].item() == pytest.approx(expected.item(), rel=1e-5)
    hooks = sum(len(m._forward_hooks) for m in [*student.modules(), *teacher.modules()])
    assert hooks == 0  # removed after each forward pass
    before = feature.projection.weight.detach().clone()
    trainer.train()
    assert not torch.equal(before, feature.projection.weight)


def test_feature_mse_unknown_module_path_fails_before_training(tmp_path):
    objectives = [{"name": "feature_mse", "student_module": "resnet.encoder.stage.1", "teacher_module": "vit.layers.1"}]
    with pytest.raises(ValueError, match=r"`student_module`.*no module at path 'resnet\.encoder\.stage\.1'.*Did you "
                                         r"mean 'resnet\.encoder\.stages\.1'"):
        DistillationTrainer(model=tiny_resnet(), teacher_model=tiny_vit(hidden=32, seed=0),
                            args=config(tmp_path, objectives=objectives))


def test_attention_kl_on_vit(tmp_path):
    student, teacher = tiny_vit(hidden=16, layers=1, seed=1), tiny_vit(hidden=32, layers=2, seed=0)
    args = config(tmp_path, objectives=[{"name": "attention_kl", "layers": "uniform"}])
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
    batch = {k: torch.tensor(v) for k, v in image_dataset(3)[:3].items()}
    terms, s, t = trainer.distillation_terms(student, batch)
    assert len(s.attentions) == 1 and s.attentions[0].shape == (3, 2, 5, 5)
    expected = 3 * losses.attention_kl(s.attentions[0], t.attentions[1])  # 1 → 2 layers: last ↔ last
    assert terms["attention_kl"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_deit_with_teacher_loads_from_a_path_with_its_distillation_head(tmp_path):
    tiny_deit().save_pretrained(tmp_path / "deit")
    args = config(tmp_path, objectives=[{"name": "deit_distill"}])
    trainer = DistillationTrainer(model=str(tmp_path / "deit"), teacher_model=tiny_vit(hidden=32, seed=0), args=args)
    assert type(trainer.model).__name__ == "DeiTForImageClassificationWithTeacher"
    assert trainer.task.name == "vision"


# ---- deep supervision (DSKD) ---------------------------------------------------------------------------------------


def _pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_deep_supervision_is_the_weighted_sum_of_per_layer_kd(tmp_path):
    from hf_distill.objectives.features import DeepSupervision, pool_features

    student, teacher = tiny_vit(layers=3, seed=1), tiny_vit(layers=2, seed=2)
    task = resolve_task("auto", model=student)
    objective = DeepSupervision(temperature=2.0)
    objective.setup(task, student, teacher)
    assert objective.layer_ids == [1, 2]  # hidden states 1 and 2 of 0..3: every layer but the last
    batch = {"pixel_values": _pixels(4), "labels": torch.tensor([0, 1, 2, 3])}
    with torch.no_grad():
        s = task.run(student, batch, frozenset({"logits", "hidden_states"}))
        t = task.run(teacher, batch, frozenset({"logits"}))
    parts = objective(s, t)
    terms = []
    for index, head in zip([1, 2], objective.heads, strict=True):
        logits = head(s.hidden_states[index].mean(dim=1))
        p_t = torch.softmax(t.logits / 2.0, -1)
        terms.append(4.0 * (p_t * (p_t.log() - torch.log_softmax(logits / 2.0, -1))).sum())
    weights = [term / sum(terms) for term in terms]  # adaptive: proportional to each layer's loss
    assert set(parts) == {"layer1", "layer2"}
    for name, weight, term in zip(("layer1", "layer2"), weights, terms, strict=True):
        torch.testing.assert_close(parts[name], weight * term, rtol=1e-5, atol=1e-6)
    equal = DeepSupervision(temperature=2.0, weights="equal")
    equal.setup(task, student, teacher)
    equal.heads.load_state_dict(objective.heads.state_dict())
    torch.testing.assert_close(sum(equal(s, t).values()), sum(terms) / 2, rtol=1e-5, atol=1e-6)
    assert pool_features(s.hidden_states[1], "cls").shape == (4, 16)


def test_deep_supervision_heads_train_with_the_student_and_are_saved(tmp_path):
    from safetensors.torch import load_file

    args = config(tmp_path, objectives=[{"name": "kl"}, {"name": "deep_supervision", "weight": 0.5}], max_steps=3,
                  per_device_train_batch_size=4, learning_rate=1e-2, logging_steps=1)
    trainer = DistillationTrainer(model=tiny_vit(layers=3, seed=1), teacher_model=tiny_vit(layers=2, seed=2),
                                  args=args, train_dataset=image_dataset(12))
    heads = trainer.objectives[1].objective.heads
    before = [h.weight.detach().clone() for h in heads]
    trainer.train()
    assert all(not torch.equal(b, h.weight) for b, h in zip(before, heads, strict=True))
    logged = [e for e in trainer.state.log_history if "loss" in e][0]
    assert {"loss/deep_supervision/layer1", "loss/deep_supervision/layer2"} <= set(logged)
    trainer.save_model(str(tmp_path / "student"))
    saved = load_file(tmp_path / "student" / "distill_objectives.safetensors")
    assert torch.equal(saved["1.objective.heads.0.weight"], heads[0].weight.detach().cpu())
    with pytest.raises(ValueError, match="`layers` must be 'shallow'"):
        normalize_objective_specs([{"name": "deep_supervision", "layers": [0]}])
