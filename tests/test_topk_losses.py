"""`losses.topk_divergence` and `losses.topk_from_logits`: what a top-k teacher cache computes, checked against
the dense divergences and against the bucket formulas written out by hand in float64."""

from __future__ import annotations

import math

import pytest
import torch

from hf_distill import losses

DENSE = {"kl": losses.kl_div, "reverse_kl": losses.reverse_kl, "jsd": losses.jsd}


def _pair(rows: int = 6, vocab: int = 11, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=generator), 2.0 * torch.randn(rows, vocab, generator=generator)


def _kl64(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Σ p log(p/q) per row in float64, 0·log 0 = 0."""
    p, q = p.double(), q.double()
    terms = torch.where(p > 0, p * (p.log() - q.log()), torch.zeros_like(p))
    return terms.sum(-1)


def test_topk_from_logits_by_hand():
    values, indices, tail = losses.topk_from_logits(torch.tensor([[0.0, 2.0, 1.0]]), k=2)
    assert indices.tolist() == [[1, 2]] and values.tolist() == [[2.0, 1.0]]
    assert tail.item() == pytest.approx(1 / (1 + math.e**2 + math.e), abs=1e-7)
    assert losses.topk_from_logits(torch.tensor([[0.0, 2.0, 1.0]]), k=3)[2].item() == 0.0
    with pytest.raises(ValueError, match="`k` must be an integer in \\[1, 3\\]"):
        losses.topk_from_logits(torch.zeros(1, 3), k=4)


@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_full_support_is_the_dense_divergence(divergence, temperature):
    student, teacher = _pair()
    mask = torch.tensor([True, False, True, True, False, True])
    support = losses.topk_from_logits(teacher, k=teacher.shape[-1])
    got = losses.topk_divergence(student, *support, divergence=divergence, temperature=temperature, mask=mask)
    want = DENSE[divergence](student, teacher, temperature=temperature, mask=mask)
    assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)


def test_forward_kl_gap_is_tail_mass_times_the_kl_inside_the_tail():
    """KL(p_t || p_s) = bucket KL + r_t · KL(p_t(·|tail) || p_s(·|tail)) (the chain rule of KL), at T = 1."""
    student, teacher = _pair(rows=5, vocab=13, seed=1)
    k = 4
    support = losses.topk_from_logits(teacher, k=k)
    p_t, p_s = teacher.double().softmax(-1), student.double().softmax(-1)
    in_tail = torch.ones_like(p_t, dtype=torch.bool).scatter(-1, support[1], False)
    r_t = (p_t * in_tail).sum(-1)
    cond_t = torch.where(in_tail, p_t, 0) / r_t.unsqueeze(-1)
    cond_s = torch.where(in_tail, p_s, 0) / (p_s * in_tail).sum(-1, keepdim=True)
    gap = (r_t * _kl64(cond_t, cond_s)).mean()
    dense = losses.kl_div(student.double(), teacher.double())
    bucket = losses.topk_divergence(student, *support)
    assert (dense - bucket).item() == pytest.approx(gap.item(), rel=1e-4)


@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "jsd"])
def test_bucket_divergence_is_a_lower_bound_at_temperature_one(divergence):
    student, teacher = _pair(rows=8, vocab=17, seed=2)
    dense = DENSE[divergence](student, teacher).item()
    previous = 0.0
    for k in (1, 3, 8, 16, 17):
        value = losses.topk_divergence(student, *losses.topk_from_logits(teacher, k), divergence=divergence).item()
        assert value <= dense + 1e-6
        assert value >= previous - 1e-6  # a finer partition never loses more
        previous = value
    assert previous == pytest.approx(dense, rel=1e-5)


def test_bucket_values_by_hand_at_temperature_with_an_equal_tail():
    """When the teacher's tail logits really are equal, the tempered tail bucket is exact: compare with the bucket
    distributions built from the full tempered softmaxes in float64."""
    teacher = torch.tensor([[3.0, 1.0, -0.5, -0.5, -0.5, -0.5]])
    student = torch.tensor([[1.0, 2.0, 0.3, -1.0, 0.0, 0.5]])
    for temperature in (0.5, 2.0, 4.0):
        p_t = (teacher.double() / temperature).softmax(-1)
        p_s = (student.double() / temperature).softmax(-1)
        bucket_t = torch.cat([p_t[:, :2], p_t[:, 2:].sum(-1, keepdim=True)], -1)
        bucket_s = torch.cat([p_s[:, :2], p_s[:, 2:].sum(-1, keepdim=True)], -1)
        support = losses.topk_from_logits(teacher, k=2)
        forward = losses.topk_divergence(student, *support, temperature=temperature)
        reverse = losses.topk_divergence(student, *support, divergence="reverse_kl", temperature=temperature)
        assert forward.item() == pytest.approx(temperature**2 * _kl64(bucket_t, bucket_s).item(), rel=1e-5)
        assert reverse.item() == pytest.approx(temperature**2 * _kl64(bucket_s, bucket_t).item(), rel=1e-5)
        m = 0.3 * bucket_t + 0.7 * bucket_s
        jsd = losses.topk_divergence(student, *support, divergence="jsd", beta=0.3, temperature=temperature)
        want = temperature**2 * (0.3 * _kl64(bucket_t, m) + 0.7 * _kl64(bucket_s, m))
        assert jsd.item() == pytest.approx(want.item(), rel=1e-5)


def test_zero_when_the_student_is_the_teacher_and_gradients_reach_only_the_student():
    student, teacher = _pair()
    support = losses.topk_from_logits(teacher, k=3)
    assert losses.topk_divergence(teacher, *support).item() == pytest.approx(0.0, abs=1e-6)
    student.requires_grad_(True)
    value = losses.topk_divergence(student, *support, temperature=2.0, reduction="sum")
    value.backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def test_masking_reduction_and_sum():
    student, teacher = _pair(rows=4)
    support = losses.topk_from_logits(teacher, k=5)
    mask = torch.tensor([True, False, True, False])
    per_row = [losses.topk_divergence(student[i : i + 1], *(s[i : i + 1] for s in support)).item() for i in (0, 2)]
    assert losses.topk_divergence(student, *support, mask=mask).item() == pytest.approx(sum(per_row) / 2, rel=1e-6)
    total = losses.topk_divergence(student, *support, mask=mask, reduction="sum")
    assert total.item() == pytest.approx(sum(per_row), rel=1e-6)
    nothing = torch.zeros(4, dtype=torch.bool)
    assert losses.topk_divergence(student, *support, mask=nothing).item() == 0.0


def test_bad_arguments_name_the_parameter():
    student, teacher = _pair(rows=2, vocab=5)
    support = losses.topk_from_logits(teacher, k=2)
    with pytest.raises(ValueError, match="`divergence`"):
        losses.topk_divergence(student, *support, divergence="tvd")
    with pytest.raises(ValueError, match="`teacher_tail_mass`"):
        losses.topk_divergence(student, support[0], support[1], support[2][:1])
    with pytest.raises(ValueError, match="`teacher_topk_logits`"):
        losses.topk_divergence(student[:1], *support)
    with pytest.raises(ValueError, match="`temperature`"):
        losses.topk_divergence(student, *support, temperature=0)
    with pytest.raises(ValueError, match="`mask`"):
        losses.topk_divergence(student, *support, mask=torch.ones(3, dtype=torch.bool))
