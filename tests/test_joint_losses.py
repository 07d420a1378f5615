"""`divergence_ce`, `topk_divergence_ce` and `fused_linear_divergence_ce`: a divergence and the label cross-entropy
in one pass, against the separate dense functions (autograd through `losses.kl_div` / `reverse_kl` / `jsd` /
`topk_divergence` and `F.cross_entropy`)."""

import pytest
import torch
import torch.nn.functional as F

from hf_distill import losses
from hf_distill.chunked_losses import divergence_ce, fused_linear_divergence_ce, topk_divergence_ce


def _separate(student, teacher, labels, divergence, beta, temperature, wd, wc, mask, reduction):
    """The reference: the dense divergence (autograd) plus F.cross_entropy written out here."""
    if teacher is None:
        div = student.new_zeros(())
    elif divergence == "jsd":
        div = losses.jsd(student, teacher, beta=beta, temperature=temperature, mask=mask, reduction=reduction)
    else:
        fn = {"kl": losses.kl_div, "reverse_kl": losses.reverse_kl}[divergence]
        div = fn(student, teacher, temperature=temperature, mask=mask, reduction=reduction)
    ce = _reference_ce(student, labels, mask, reduction)
    return wd * div + wc * ce, div, ce


def _reference_ce(student, labels, mask, reduction):
    """F.cross_entropy over the labelled positions inside the mask, summed or averaged over them."""
    keep = labels != -100
    if mask is not None:
        keep = keep & mask
    targets = labels.masked_fill(~keep, -100).reshape(-1)
    ce = F.cross_entropy(student.reshape(-1, student.shape[-1]).float(), targets, ignore_index=-100, reduction="sum")
    return ce / keep.sum().clamp_min(1) if reduction == "mean" else ce


def _batch(seed=0, b=3, length=7, vocab=13):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(b, length, vocab, generator=g) * 2
    teacher = torch.randn(b, length, vocab, generator=g) * 2
    labels = torch.randint(0, vocab, (b, length), generator=g)
    labels[0, :2] = -100  # ignored labels inside the mask
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[1, 4:] = False  # padding
    labels[1, 4:] = -100
    return student, teacher, labels, mask


CASES = [("kl", 0.5, 1.0), ("kl", 0.5, 2.0), ("reverse_kl", 0.5, 1.0), ("reverse_kl", 0.5, 3.0), ("jsd", 0.5, 1.0),
         ("jsd", 0.3, 2.0), ("jsd", 0.0, 1.0), ("jsd", 1.0, 1.0)]


@pytest.mark.parametrize("divergence,beta,temperature", CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("use_mask", [True, False])
def test_divergence_ce_matches_separate_losses(divergence, beta, temperature, reduction, use_mask):
    student, teacher, labels, mask = _batch()
    mask = mask if use_mask else None
    a = student.clone().requires_grad_(True)
    ref_total, ref_div, ref_ce = _separate(a, teacher, labels, divergence, beta, temperature, 0.7, 0.4, mask,
                                           reduction)
    ref_total.backward()
    b = student.clone().requires_grad_(True)
    out = divergence_ce(b, teacher, labels, divergence, beta=beta, temperature=temperature, divergence_weight=0.7,
                        ce_weight=0.4, mask=mask, reduction=reduction, chunk_size=4)
    out.total.backward()
    assert torch.allclose(out.total, ref_total, atol=1e-6, rtol=1e-6)
    assert torch.allclose(out.divergence, ref_div, atol=1e-6, rtol=1e-6)
    assert torch.allclose(out.ce, ref_ce, atol=1e-6, rtol=1e-6)
    assert torch.allclose(b.grad, a.grad, atol=1e-6, rtol=1e-5)
    assert not out.divergence.requires_grad and not out.ce.requires_grad


def test_divergence_ce_without_teacher_is_the_cross_entropy():
    student, _, labels, mask = _batch(1)
    a = student.clone().requires_grad_(True)
    ref = 0.3 * F.cross_entropy(a.reshape(-1, a.shape[-1]), labels.masked_fill(~mask, -100).reshape(-1))
    ref.backward()
    b = student.clone().requires_grad_(True)
    out = divergence_ce(b, None, labels, ce_weight=0.3, mask=mask, chunk_size=5)
    out.total.backward()
    assert torch.allclose(out.total, ref, atol=1e-6)
    assert out.divergence.item() == 0.0
    assert torch.allclose(b.grad, a.grad, atol=1e-6)


def test_divergence_ce_without_teacher_or_labels_is_zero():
    student, _, labels, _ = _batch(1)
    s = student.clone().requires_grad_(True)
    out = divergence_ce(s, None, torch.full_like(labels, -100), chunk_size=5)
    out.total.backward()
    assert out.total.item() == 0.0 and not s.grad.any()


def test_every_counted_row_and_no_mask_give_the_same_result():
    # An all-true mask takes the slice path (no gathered copies); padding takes the index path: same values.
    student, teacher, labels, _ = _batch(2)
    results = []
    for mask in (None, torch.ones(labels.shape, dtype=torch.bool)):
        s = student.clone().requires_grad_(True)
        out = divergence_ce(s, teacher, labels, mask=mask, chunk_size=4)
        out.total.backward()
        results.append((out.total, s.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_divergence_ce_gradient_scales_with_the_incoming_gradient():
    student, teacher, labels, _ = _batch(2)
    a = student.clone().requires_grad_(True)
    (3.0 * divergence_ce(a, teacher, labels, chunk_size=2).total).backward()
    b = student.clone().requires_grad_(True)
    (3.0 * (losses.kl_div(b, teacher) + losses.ce(b, labels))).backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_divergence_ce_no_counted_position_gives_zero():
    student, teacher, labels, _ = _batch(3)
    s = student.clone().requires_grad_(True)
    out = divergence_ce(s, teacher, labels, mask=torch.zeros(labels.shape, dtype=torch.bool))
    out.total.backward()
    assert out.total.item() == 0.0 and not s.grad.any()


def test_divergence_ce_rejects_bad_labels():
    student, teacher, labels, _ = _batch(4)
    with pytest.raises(ValueError, match="token ids"):
        divergence_ce(student, teacher, labels.masked_fill(labels == labels[0, 3], 99))
    with pytest.raises(ValueError, match="`labels` must have shape"):
        divergence_ce(student, teacher, labels[:, :-1])


@pytest.mark.parametrize("divergence,beta,temperature", CASES[:5])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_linear_divergence_ce_matches_dense_path(divergence, beta, temperature, bias):
    g = torch.Generator().manual_seed(5)
    _, teacher, labels, mask = _batch(5)
    hidden = torch.randn(3, 7, 6, generator=g)
    weight = torch.randn(13, 6, generator=g)
    b0 = torch.randn(13, generator=g) if bias else None
    params_a = [t.clone().requires_grad_(True) for t in (hidden, weight) + ((b0,) if bias else ())]
    logits = F.linear(params_a[0], params_a[1], params_a[2] if bias else None)
    ref_total, ref_div, ref_ce = _separate(logits, teacher, labels, divergence, beta, temperature, 0.5, 0.5, mask,
                                           "sum")
    ref_total.backward()
    params_b = [t.clone().requires_grad_(True) for t in (hidden, weight) + ((b0,) if bias else ())]
    out = fused_linear_divergence_ce(params_b[0], params_b[1], teacher, labels, divergence, beta=beta,
                                     temperature=temperature, divergence_weight=0.5, ce_weight=0.5, mask=mask,
                                     reduction="sum", chunk_size=4, student_bias=params_b[2] if bias else None)
    out.total.backward()
    assert torch.allclose(out.total, ref_total, atol=1e-5, rtol=1e-5)
    assert torch.allclose(out.divergence, ref_div, atol=1e-5, rtol=1e-5)
    assert torch.allclose(out.ce, ref_ce, atol=1e-5, rtol=1e-5)
    for pa, pb in zip(params_a, params_b, strict=True):
        assert torch.allclose(pb.grad, pa.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_mask", [True, False])
def test_divergence_ce_reads_shifted_logits_without_copying_them_first(use_mask):
    """A causal LM's `logits[:, :-1]` cannot be viewed as [N, V]; rows are then read through their (batch, position)
    indices. Same values and gradients as the dense functions."""
    student, teacher, labels, mask = _batch(6, length=8)
    a = student.clone().requires_grad_(True)
    ref = _separate(a[:, :-1], teacher[:, :-1], labels[:, 1:], "kl", 0.5, 1.0, 0.5, 0.5,
                    mask[:, 1:] if use_mask else None, "sum")[0]
    ref.backward()
    b = student.clone().requires_grad_(True)
    shifted = b[:, :-1]
    assert not shifted.is_contiguous()
    out = divergence_ce(shifted, teacher[:, :-1], labels[:, 1:], divergence_weight=0.5, ce_weight=0.5,
                        mask=mask[:, 1:] if use_mask else None, reduction="sum", chunk_size=4)
    out.total.backward()
    torch.testing.assert_close(out.total, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6)


def test_shifted_logits_are_read_as_views_when_every_row_counts():
    # Chunks end at sequence boundaries, so each is a view of `logits[:, :-1]`: no gathered copy of [c, V] rows.
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[-1] == 13:  # [c, V] rows
                self.names.append(str(func))
            return out

    student, teacher, labels, _ = _batch(6, length=8)
    labels[labels == -100] = 1
    ops = Ops()
    with ops:
        divergence_ce(student[:, :-1], teacher[:, :-1], labels[:, 1:], chunk_size=4,
                      mask=torch.ones(3, 7, dtype=torch.bool))
    assert ops.names and not [name for name in ops.names if name.startswith("aten.index")]


# ---- a top-k teacher support (a teacher-signal cache) ----------------------------------------------------------------


def _topk_reference(student, support, labels, divergence, beta, temperature, wd, wc, mask, reduction):
    div = losses.topk_divergence(student, *support, divergence, beta=beta, temperature=temperature, mask=mask,
                                 reduction=reduction)
    ce = _reference_ce(student, labels, mask, reduction)
    return wd * div + wc * ce, div, ce


@pytest.mark.parametrize("divergence,beta,temperature", CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("use_mask", [True, False])
@pytest.mark.parametrize("k", [4, 13])  # 13 = V: no tail bucket
def test_topk_divergence_ce_matches_separate_losses(divergence, beta, temperature, reduction, use_mask, k):
    student, teacher, labels, mask = _batch(5)
    mask = mask if use_mask else None
    support = losses.topk_from_logits(teacher, k)
    a = student.clone().requires_grad_(True)
    ref_total, ref_div, ref_ce = _topk_reference(a, support, labels, divergence, beta, temperature, 0.7, 0.4, mask,
                                                 reduction)
    ref_total.backward()
    b = student.clone().requires_grad_(True)
    out = topk_divergence_ce(b, *support, labels, divergence, beta=beta, temperature=temperature,
                             divergence_weight=0.7, ce_weight=0.4, mask=mask, reduction=reduction, chunk_size=4)
    out.total.backward()
    assert torch.allclose(out.total, ref_total, atol=1e-6, rtol=1e-6)
    assert torch.allclose(out.divergence, ref_div, atol=1e-6, rtol=1e-6)
    assert torch.allclose(out.ce, ref_ce, atol=1e-6, rtol=1e-6)
    assert torch.allclose(b.grad, a.grad, atol=1e-6, rtol=1e-5)


def test_topk_divergence_ce_tail_gradient_is_exact_when_the_students_tail_is_tiny():
    # The student puts e^-60 on each tail token (tail mass ~1e-25), the teacher 1e-3 on its tail: the tail term is
    # large and its gradient is spread over the tail tokens by p_s(v) / p_s(tail), which must not under/overflow.
    g = torch.Generator().manual_seed(6)
    teacher = torch.randn(2, 5, 40, generator=g)
    support = losses.topk_from_logits(teacher, 6)
    values, indices, _ = support
    tail = torch.full((2, 5), 1e-3)
    student = torch.randn(2, 5, 40, generator=g).scatter(-1, indices, 60.0)
    labels = indices[..., 0]
    a = student.double().requires_grad_(True)  # the float64 reference
    _topk_reference(a, (values.double(), indices, tail.double()), labels, "kl", 0.5, 1.0, 1.0, 0.5, None,
                    "mean")[0].backward()
    b = student.clone().requires_grad_(True)
    out = topk_divergence_ce(b, values, indices, tail, labels, "kl", ce_weight=0.5, chunk_size=3)
    out.total.backward()
    assert torch.isfinite(b.grad).all()
    assert torch.allclose(b.grad.double(), a.grad, atol=1e-6, rtol=1e-4)
    outside = torch.ones_like(student, dtype=torch.bool).scatter(-1, indices, False)
    assert (b.grad[outside] < 0).all()  # the student must raise its tail towards the teacher's 1e-3


def test_topk_divergence_ce_reads_a_half_precision_cache_as_float32():
    student, teacher, labels, mask = _batch(7)
    values, indices, tail = losses.topk_from_logits(teacher, 5)
    half = (values.half(), indices.int(), tail.half())
    want = topk_divergence_ce(student, half[0].float(), indices, half[2].float(), labels, mask=mask).total
    assert torch.equal(topk_divergence_ce(student, *half, labels, mask=mask).total, want)


def test_topk_divergence_ce_refuses_a_support_of_the_wrong_shape():
    student, teacher, labels, _ = _batch(8)
    values, indices, tail = losses.topk_from_logits(teacher, 5)
    with pytest.raises(ValueError, match="top-k logits and indices"):
        topk_divergence_ce(student, values[:, :-1], indices[:, :-1], tail, labels)
    with pytest.raises(ValueError, match="tail mass"):
        topk_divergence_ce(student, values, indices, tail[:, None], labels)
    with pytest.raises(ValueError, match="k=20"):
        topk_divergence_ce(student, *losses.topk_from_logits(torch.randn(3, 7, 20), 20), labels)


@pytest.mark.parametrize("divergence,beta,temperature", [("kl", 0.5, 2.0), ("jsd", 0.3, 1.0)])
def test_fused_linear_divergence_ce_with_a_topk_teacher_matches_dense_path(divergence, beta, temperature):
    g = torch.Generator().manual_seed(9)
    _, teacher, labels, mask = _batch(9)
    support = losses.topk_from_logits(teacher, 4)
    hidden, weight = torch.randn(3, 7, 6, generator=g), torch.randn(13, 6, generator=g)
    bias = torch.randn(13, generator=g)
    params_a = [t.clone().requires_grad_(True) for t in (hidden, weight, bias)]
    ref_total, ref_div, _ = _topk_reference(F.linear(*params_a), support, labels, divergence, beta, temperature,
                                            0.5, 0.5, mask, "mean")
    ref_total.backward()
    params_b = [t.clone().requires_grad_(True) for t in (hidden, weight, bias)]
    out = fused_linear_divergence_ce(params_b[0], params_b[1], None, labels, divergence, beta=beta,
                                     temperature=temperature, divergence_weight=0.5, ce_weight=0.5, mask=mask,
                                     chunk_size=4, student_bias=params_b[2], teacher_topk=support)
    out.total.backward()
    assert torch.allclose(out.total, ref_total, atol=1e-5, rtol=1e-5)
    assert torch.allclose(out.divergence, ref_div, atol=1e-5, rtol=1e-5)
    for pa, pb in zip(params_a, params_b, strict=True):
        assert torch.allclose(pb.grad, pa.grad, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        fused_linear_divergence_ce(hidden, weight, teacher, labels, teacher_topk=support)
