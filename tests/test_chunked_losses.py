"""Tests for ``hf_distill.chunked_losses``: the chunked and fused divergences against the dense functions of
``hf_distill.losses`` (values and gradients, to 1e-5) and against float64 references written from the formulas,
plus the closed-form gradients against autograd, dtypes, ``-inf`` logits, empty masks and argument checks."""

import math

import pytest
import torch

from hf_distill.chunked_losses import _chunk_rows_and_grad, chunked_divergence, fused_linear_divergence
from hf_distill.losses import jsd, kl_div, reverse_kl
from tests.helpers import generator, single_thread  # noqa: F401  (fixture)

# (divergence, beta): JSD at both end points and inside.
DIVERGENCES = [("kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.0), ("jsd", 0.3), ("jsd", 0.5), ("jsd", 1.0)]
DIV_IDS = ["kl", "reverse_kl", "jsd-0", "jsd-0.3", "jsd-0.5", "jsd-1"]
TEMPERATURES = [0.5, 1.0, 4.0]
# 3 × 5 = 15 rows (fewer when masked): 1 row per chunk, uneven chunks, one chunk exactly, one chunk larger than N.
CHUNK_SIZES = [1, 4, 7, 15, 1000]


pytestmark = pytest.mark.usefixtures("single_thread")
_gen = generator


def _logits(shape, seed, scale=3.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=_gen(seed)) * scale).to(dtype)


def _mask(shape, seed):
    m = torch.rand(*shape, generator=_gen(seed)) < 0.6
    m.view(-1)[0] = True
    m.view(-1)[-1] = False
    return m


def dense(divergence, beta, s, t, **kw):
    if divergence == "kl":
        return kl_div(s, t, **kw)
    if divergence == "reverse_kl":
        return reverse_kl(s, t, **kw)
    return jsd(s, t, beta=beta, **kw)


def ref_rows(divergence, beta, s, t, temperature):
    """float64 per-row divergence (no T²) from the formulas, differentiable; finite logits only."""
    ls = torch.log_softmax(s.double() / temperature, dim=-1)
    lt = torch.log_softmax(t.double() / temperature, dim=-1)

    def kl(lp, lq):
        return (lp.exp() * (lp - lq)).sum(dim=-1)

    if divergence == "kl" or (divergence == "jsd" and beta == 0.0):
        return kl(lt, ls)
    if divergence == "reverse_kl" or (divergence == "jsd" and beta == 1.0):
        return kl(ls, lt)
    lm = torch.log(beta * lt.exp() + (1.0 - beta) * ls.exp())  # mixture in probability space
    return beta * kl(lt, lm) + (1.0 - beta) * kl(ls, lm)


def ref_loss(divergence, beta, s, t, temperature=1.0, mask=None, reduction="mean"):
    rows = ref_rows(divergence, beta, s, t, temperature).reshape(-1)
    if mask is not None:
        rows = rows[mask.reshape(-1)]
    total = rows.sum() if reduction == "sum" or rows.numel() == 0 else rows.mean()
    return total * temperature**2


def _value_and_grad(fn, *tensors):
    """fn(*leaves) and the gradients of the leaves (fresh leaves, float inputs kept in their dtype)."""
    leaves = [x.detach().clone().requires_grad_(True) for x in tensors]
    out = fn(*leaves)
    out.backward()
    return out.detach(), [x.grad for x in leaves]


def _close(actual, expected, atol=1e-5, rtol=1e-5):
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)


# ----------------------------------------------------------------------------------------------------------------
# Closed-form gradients against autograd
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("divergence,beta", [("kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3), ("jsd", 0.5)])
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_closed_form_gradient_matches_autograd(divergence, beta, temperature):
    s, t = _logits((6, 17), 1), _logits((6, 17), 2)
    def log_probs():
        return torch.log_softmax(s / temperature, dim=-1), torch.log_softmax(t / temperature, dim=-1)

    rows, grad = _chunk_rows_and_grad(*log_probs(), divergence, beta, grad_scale=temperature)
    s64 = s.double().requires_grad_(True)
    ref = ref_rows(divergence, beta, s64, t, temperature)
    (ref_grad,) = torch.autograd.grad(ref.sum() * temperature**2, s64)
    _close(rows, ref.detach(), atol=1e-6)
    _close(grad, ref_grad, atol=1e-6)
    # Without a gradient requested only the values come back.
    rows_only, none = _chunk_rows_and_grad(*log_probs(), divergence, beta, grad_scale=None)
    assert none is None and torch.equal(rows_only, rows)


# ----------------------------------------------------------------------------------------------------------------
# chunked_divergence: value and gradient = dense (and float64 reference)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("divergence,beta", DIVERGENCES, ids=DIV_IDS)
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_chunked_matches_dense(divergence, beta, temperature, masked, reduction):
    s, t = _logits((3, 5, 13), 10), _logits((3, 5, 13), 11)
    mask = _mask((3, 5), 12) if masked else None
    kw = {"temperature": temperature, "mask": mask, "reduction": reduction}
    want, (want_grad,) = _value_and_grad(lambda x: dense(divergence, beta, x, t, **kw), s)
    ref, (ref_grad,) = _value_and_grad(lambda x: ref_loss(divergence, beta, x, t, **kw), s.double())
    _close(want, ref)
    _close(want_grad, ref_grad)
    for chunk_size in CHUNK_SIZES:
        got, (got_grad,) = _value_and_grad(
            lambda x, c=chunk_size: chunked_divergence(x, t, divergence, beta=beta, chunk_size=c, **kw), s
        )
        assert got.dtype == torch.float32 and got.dim() == 0
        _close(got, want)
        _close(got_grad, want_grad)
        _close(got_grad, ref_grad)
        assert got_grad.dtype == torch.float32 and got_grad.shape == s.shape
        if masked:  # positions that do not count get exactly no gradient
            assert torch.all(got_grad[~mask] == 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("divergence,beta", [("kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3)])
def test_chunked_low_precision_inputs(dtype, divergence, beta):
    s, t = _logits((4, 6, 19), 20, dtype=dtype), _logits((4, 6, 19), 21, dtype=dtype)
    mask = _mask((4, 6), 22)
    kw = {"temperature": 2.0, "mask": mask}
    # The dense functions upcast the same low-precision logits: maths in float32 on both sides.
    want, (want_grad,) = _value_and_grad(lambda x: dense(divergence, beta, x, t, **kw), s)
    got, (got_grad,) = _value_and_grad(lambda x: chunked_divergence(x, t, divergence, beta, chunk_size=5, **kw), s)
    assert got.dtype == torch.float32
    _close(got, want)
    assert got_grad.dtype == dtype
    # Both are float32 gradients rounded once to `dtype`: at most one rounding step apart.
    _close(got_grad, want_grad, atol=1e-6, rtol=1e-2)
    ref, (ref_grad,) = _value_and_grad(lambda x: ref_loss(divergence, beta, x, t, **kw), s.double())
    _close(got, ref)


def _finite(x):
    return x.clamp(min=-1e4)


@pytest.mark.parametrize("divergence,beta", DIVERGENCES, ids=DIV_IDS)
def test_chunked_minus_inf_logits(divergence, beta):
    s, t = _logits((2, 4, 9), 30), _logits((2, 4, 9), 31)
    s[..., 0] = t[..., 0] = -math.inf  # a class neither model can produce: contributes nothing
    s[0, 1, 3] = t[0, 1, 3] = -math.inf
    cases = [(s, t)]
    if divergence != "reverse_kl" and not (divergence == "jsd" and beta == 1.0):
        t2 = t.clone()
        t2[1, 2, 5] = -math.inf  # p_t = 0 where p_s > 0: finite except for KL(p_s || p_t)
        cases.append((s, t2))
    if divergence != "kl" and not (divergence == "jsd" and beta == 0.0):
        s2 = s.clone()
        s2[1, 0, 4] = -math.inf  # p_s = 0 where p_t > 0: finite except for KL(p_t || p_s)
        cases.append((s2, t))
    for student, teacher in cases:
        for temperature in (1.0, 4.0):
            kw = {"temperature": temperature}
            # Reference: the dense function on -1e4 instead of -inf (p underflows to exactly 0, same value); the
            # dense jsd itself gives a NaN gradient at a class that is -inf for both models when 0 < β < 1.
            want, (want_grad,) = _value_and_grad(
                lambda x, y=teacher, k=kw: dense(divergence, beta, x, _finite(y), **k), _finite(student)
            )
            got, (got_grad,) = _value_and_grad(
                lambda x, y=teacher, k=kw: chunked_divergence(x, y, divergence, beta, chunk_size=3, **k), student
            )
            assert torch.isfinite(got) and torch.isfinite(got_grad).all()
            _close(got, want)
            _close(got_grad, want_grad)
            assert torch.all(got_grad[student == -math.inf] == 0)
            if divergence != "jsd" or beta in (0.0, 1.0):  # the dense function is NaN-free on -inf there
                real, (real_grad,) = _value_and_grad(
                    lambda x, y=teacher, k=kw: dense(divergence, beta, x, y, **k), student
                )
                _close(got, real)
                _close(got_grad, real_grad)


@pytest.mark.parametrize("divergence,beta", DIVERGENCES, ids=DIV_IDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_chunked_empty_mask_gives_zero(divergence, beta, reduction):
    s, t = _logits((2, 3, 7), 40), _logits((2, 3, 7), 41)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    got, (grad,) = _value_and_grad(
        lambda x: chunked_divergence(x, t, divergence, beta, mask=mask, reduction=reduction, chunk_size=2), s
    )
    assert got.item() == 0.0 and torch.count_nonzero(grad) == 0
    assert dense(divergence, beta, s, t, mask=mask, reduction=reduction).item() == 0.0
    # No rows at all.
    empty = torch.zeros(0, 7, requires_grad=True)
    chunked_divergence(empty, torch.zeros(0, 7), divergence, beta).backward()
    assert empty.grad.shape == (0, 7)


def test_chunked_teacher_gets_no_gradient_and_grad_output_scales():
    s, t = _logits((3, 4, 11), 50), _logits((3, 4, 11), 51)
    t.requires_grad_(True)
    _, (want_grad,) = _value_and_grad(lambda x: kl_div(x, t.detach(), temperature=2.0), s)
    x = s.clone().requires_grad_(True)
    loss = chunked_divergence(x, t, "kl", temperature=2.0, chunk_size=5)
    (3.0 * loss).backward(retain_graph=True)
    assert t.grad is None
    _close(x.grad, 3.0 * want_grad)
    loss.backward()  # a second backward through the retained graph accumulates (the stored gradient is intact)
    _close(x.grad, 4.0 * want_grad)
    assert t.grad is None


def test_chunked_composes_with_other_losses_and_layouts():
    s, t = _logits((3, 4, 11), 52), _logits((3, 4, 11), 53)
    labels = torch.randint(0, 11, (3, 4), generator=_gen(54))

    def both(fn):
        return lambda x: fn(x, t, temperature=2.0) + torch.nn.functional.cross_entropy(x.reshape(-1, 11),
                                                                                     labels.reshape(-1))

    want, (want_grad,) = _value_and_grad(both(kl_div), s)
    got, (got_grad,) = _value_and_grad(both(lambda x, y, **kw: chunked_divergence(x, y, chunk_size=5, **kw)), s)
    _close(got, want)
    _close(got_grad, want_grad)
    # Non-contiguous logits (a transposed view) work too.
    st, tt = s.transpose(0, 1), t.transpose(0, 1)
    want, (want_grad,) = _value_and_grad(lambda x: jsd(x.transpose(0, 1), tt), st.transpose(0, 1).contiguous())
    got, (got_grad,) = _value_and_grad(lambda x: chunked_divergence(x.transpose(0, 1), tt, "jsd", chunk_size=5),
                                       st.transpose(0, 1).contiguous())
    _close(got, want)
    _close(got_grad, want_grad)


def test_chunked_without_grad_returns_value_only():
    s, t = _logits((5, 9), 55), _logits((5, 9), 56)
    out = chunked_divergence(s, t, "reverse_kl", chunk_size=2)
    assert not out.requires_grad
    _close(out, reverse_kl(s, t))


# ----------------------------------------------------------------------------------------------------------------
# fused_linear_divergence = dense on hidden @ weight.T + bias
# ----------------------------------------------------------------------------------------------------------------


def _head(seed, leading=(3, 5), h_s=8, h_t=12, vocab=23, bias=True, dtype=torch.float32):
    g = _gen(seed)
    hs, ht = torch.randn(*leading, h_s, generator=g), torch.randn(*leading, h_t, generator=g)
    ws, wt = torch.randn(vocab, h_s, generator=g), torch.randn(vocab, h_t, generator=g)
    bs, bt = (torch.randn(vocab, generator=g), torch.randn(vocab, generator=g)) if bias else (None, None)
    return [None if x is None else x.to(dtype) for x in (hs, ws, bs, ht, wt, bt)]


def _dense_head(divergence, beta, **kw):
    def fn(hs, ws, bs, ht, wt, bt):
        return dense(divergence, beta, torch.nn.functional.linear(hs, ws, bs),
                     torch.nn.functional.linear(ht, wt, bt), **kw)

    return fn


def _fused(divergence, beta, chunk_size, **kw):
    def fn(hs, ws, bs, ht, wt, bt):
        return fused_linear_divergence(hs, ws, ht, wt, divergence, beta, chunk_size=chunk_size, student_bias=bs,
                                       teacher_bias=bt, **kw)

    return fn


def _value_and_student_grads(fn, hs, ws, bs, ht, wt, bt):
    leaves = [None if x is None else x.detach().clone().requires_grad_(i < 3) for i, x in enumerate(
        (hs, ws, bs, ht, wt, bt))]
    out = fn(*leaves)
    out.backward()
    return out.detach(), [None if x is None else x.grad for x in leaves[:3]]


@pytest.mark.parametrize("divergence,beta", DIVERGENCES, ids=DIV_IDS)
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fused_matches_dense_on_full_logits(divergence, beta, temperature, masked, reduction):
    tensors = _head(60)
    mask = _mask((3, 5), 61) if masked else None
    kw = {"temperature": temperature, "mask": mask, "reduction": reduction}
    want, want_grads = _value_and_student_grads(_dense_head(divergence, beta, **kw), *tensors)
    for chunk_size in (1, 4, 15, 64):
        got, got_grads = _value_and_student_grads(_fused(divergence, beta, chunk_size, **kw), *tensors)
        _close(got, want)
        for name, g, w in zip(("hidden", "weight", "bias"), got_grads, want_grads, strict=True):
            assert g.dtype == torch.float32 and g.shape == w.shape, name
            _close(g, w)
        if masked:
            assert torch.all(got_grads[0][~mask] == 0)


def test_fused_without_bias_and_flat_hidden():
    tensors = _head(62, leading=(9,), bias=False)
    for divergence, beta in DIVERGENCES:
        want, want_grads = _value_and_student_grads(_dense_head(divergence, beta, temperature=2.0), *tensors)
        got, got_grads = _value_and_student_grads(_fused(divergence, beta, 4, temperature=2.0), *tensors)
        _close(got, want)
        assert got_grads[2] is None
        _close(got_grads[0], want_grads[0])
        _close(got_grads[1], want_grads[1])


def test_fused_teacher_gets_no_gradient_and_frozen_parts():
    hs, ws, bs, ht, wt, bt = _head(63)
    for x in (hs, ws, bs, ht, wt, bt):
        x.requires_grad_(True)
    loss = fused_linear_divergence(hs, ws, ht, wt, "jsd", chunk_size=4, student_bias=bs, teacher_bias=bt)
    (2.0 * loss).backward()
    assert ht.grad is None and wt.grad is None and bt.grad is None
    assert hs.grad is not None and ws.grad is not None and bs.grad is not None
    _, want_grads = _value_and_student_grads(_dense_head("jsd", 0.5), hs, ws, bs, ht, wt, bt)
    for g, w in zip((hs.grad, ws.grad, bs.grad), want_grads, strict=True):
        _close(g, 2.0 * w)
    # Only the weight trains (frozen body): gradients for it alone.
    w_only = ws.detach().clone().requires_grad_(True)
    hs_frozen = hs.detach()
    fused_linear_divergence(hs_frozen, w_only, ht, wt, "jsd", chunk_size=4, student_bias=bs.detach(),
                            teacher_bias=bt).backward()
    _close(w_only.grad, want_grads[1])
    assert hs_frozen.grad is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_low_precision_inputs(dtype):
    tensors = _head(64, dtype=dtype, h_s=16, h_t=16)
    mask = _mask((3, 5), 65)
    kw = {"temperature": 2.0, "mask": mask}
    want, want_grads = _value_and_student_grads(_dense_head("kl", 0.5, **kw), *tensors)
    got, got_grads = _value_and_student_grads(_fused("kl", 0.5, 4, **kw), *tensors)
    assert got.dtype == torch.float32
    # Logits are computed in `dtype` as in the model; the chunk's matmul may round differently from the full one.
    _close(got, want, atol=1e-3, rtol=1e-3)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert g.dtype == dtype
        _close(g, w, atol=2e-3, rtol=2e-2)
    ref64 = [None if x is None else x.double() for x in tensors]
    want64, _ = _value_and_student_grads(
        lambda hs, ws, bs, ht, wt, bt: ref_loss("kl", 0.5, hs @ ws.T + bs, ht @ wt.T + bt, **kw), *ref64
    )
    _close(got, want64, atol=0.05, rtol=0.05)  # close to the exact value up to the low-precision logits


@pytest.mark.parametrize("divergence,beta", DIVERGENCES, ids=DIV_IDS)
def test_fused_empty_mask_gives_zero(divergence, beta):
    tensors = _head(66)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    got, grads = _value_and_student_grads(_fused(divergence, beta, 4, mask=mask), *tensors)
    assert got.item() == 0.0
    assert all(torch.count_nonzero(g) == 0 for g in grads)


def test_fused_minus_inf_bias():
    hs, ws, bs, ht, wt, bt = _head(67)
    bs[3] = bt[3] = -math.inf  # a token neither head can produce
    tensors = (hs, ws, bs, ht, wt, bt)
    finite = (hs, ws, _finite(bs), ht, wt, _finite(bt))  # see test_chunked_minus_inf_logits
    for divergence, beta in DIVERGENCES:
        want, want_grads = _value_and_student_grads(_dense_head(divergence, beta), *finite)
        got, got_grads = _value_and_student_grads(_fused(divergence, beta, 4), *tensors)
        assert torch.isfinite(got) and all(torch.isfinite(g).all() for g in got_grads)
        _close(got, want)
        for g, w in zip(got_grads, want_grads, strict=True):
            _close(g, w)


# ----------------------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"divergence": "kld"}, "`divergence` must be one of"),
        ({"divergence": "jsd", "beta": 1.5}, r"`beta` must be in \[0, 1\], got 1.5"),
        ({"divergence": "jsd", "beta": True}, "`beta`.*got True"),
        ({"temperature": 0.0}, "`temperature` must be a finite number > 0, got 0.0"),
        ({"temperature": math.inf}, "`temperature`"),
        ({"reduction": "avg"}, "`reduction` must be 'mean' or 'sum', got 'avg'"),
        ({"chunk_size": 0}, "`chunk_size` must be a positive int .*got 0"),
        ({"chunk_size": -3}, "`chunk_size`.*got -3"),
        ({"chunk_size": 2.5}, "`chunk_size`.*got 2.5"),
        ({"chunk_size": True}, "`chunk_size`.*got True"),
        ({"chunk_size": "8"}, "`chunk_size`.*got '8'"),
        ({"mask": torch.ones(2, 4, dtype=torch.bool)}, r"`mask` must have shape \(2, 3\).*got \(2, 4\)"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    s, t = _logits((2, 3, 5), 70), _logits((2, 3, 5), 71)
    with pytest.raises(ValueError, match=match):
        chunked_divergence(s, t, **kwargs)
    hs, ws, _, ht, wt, _ = _head(72, leading=(2, 3))
    with pytest.raises(ValueError, match=match):
        fused_linear_divergence(hs, ws, ht, wt, **kwargs)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"same shape \[..., V\], got \(2, 5\) and \(2, 6\)"):
        chunked_divergence(torch.zeros(2, 5), torch.zeros(2, 6))
    with pytest.raises(ValueError, match="same shape"):
        chunked_divergence(torch.zeros(()), torch.zeros(()))
    hs, ws, bs, ht, wt, bt = _head(73, leading=(2, 3), h_s=8, h_t=12, vocab=23)
    with pytest.raises(ValueError, match=r"`student_weight` must have shape \[V, H\] with H = 8.*got \(23, 12\)"):
        fused_linear_divergence(hs, wt, ht, wt)
    with pytest.raises(ValueError, match="`teacher_weight` must have shape"):
        fused_linear_divergence(hs, ws, ht, ws)
    with pytest.raises(ValueError, match="same vocabulary size V"):
        fused_linear_divergence(hs, ws, ht, wt[:20])
    with pytest.raises(ValueError, match=r"`student_bias` must have shape \(23,\)"):
        fused_linear_divergence(hs, ws, ht, wt, student_bias=bs[:5])
    with pytest.raises(ValueError, match="`teacher_bias` must have shape"):
        fused_linear_divergence(hs, ws, ht, wt, teacher_bias=bt[:5])
    with pytest.raises(ValueError, match="same leading shape"):
        fused_linear_divergence(hs, ws, ht[:1], wt)


@pytest.mark.parametrize("name", ["kl", "jsd"])
def test_objective_chunk_size_trains_exactly_like_the_dense_objective(tmp_path, name):
    """`chunk_size` on a logit objective changes how the loss is computed, not what it is: same logged losses and
    the same weights after a few SGD steps on padded language-model batches."""
    from hf_distill import DistillationTrainer
    from tests.helpers import config, lm_dataset, pad_collate, tiny_gpt2

    teacher, data = tiny_gpt2(layers=2, seed=1), lm_dataset([9, 12, 5, 16, 7, 10], seed=0)
    trained = []
    for chunk_size in (None, 7):
        spec = {"name": name, "weight": 1.0, "temperature": 2.0, "chunk_size": chunk_size}
        args = config(tmp_path / str(chunk_size), objectives=[spec], per_device_train_batch_size=3, max_steps=2,
                      optim="sgd", learning_rate=0.5, logging_steps=1)
        trainer = DistillationTrainer(model=tiny_gpt2(layers=1, seed=2), teacher_model=teacher, args=args,
                                      train_dataset=data, data_collator=pad_collate)
        trainer.train()
        trained.append(trainer)
    losses_logged = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in trained]
    assert losses_logged[1] == pytest.approx(losses_logged[0], rel=1e-5)
    for a, b in zip(trained[0].model.parameters(), trained[1].model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="`chunk_size` must be a positive integer"):
        config(tmp_path / "bad", objectives=[{"name": "kl", "chunk_size": 0}])
