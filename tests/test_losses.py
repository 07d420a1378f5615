"""Unit tests for the pure loss functions in ``hf_distill.losses``.

Every expected value is computed independently of the code under test: either by hand (literals, with the
arithmetic in a comment) or by small float64 numpy references written from the formulas of the design contract.
"""

import math

import numpy as np
import pytest
import torch

from hf_distill import losses
from hf_distill.losses import ce, embedding_cosine, embedding_mse, jsd, kl_div, margin_mse, reverse_kl
from tests.helpers import generator, single_thread  # noqa: F401  (fixture)

LN3 = math.log(3.0)
TEMPERATURES = [0.5, 1.0, 2.0, 4.0]
# (kind, beta): the three divergences, JSD at several mixture weights.
DIVERGENCES = [("kl_div", None), ("reverse_kl", None), ("jsd", 0.5), ("jsd", 0.2)]
DIV_IDS = [k if b is None else f"jsd-{b}" for k, b in DIVERGENCES]


# ----------------------------------------------------------------------------------------------------------------
# Helpers and float64 references
# ----------------------------------------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("single_thread")
_gen = generator


def _logits(shape, seed, scale=3.0):
    return torch.randn(*shape, generator=_gen(seed)) * scale


def _mask(shape, seed, p=0.6):
    m = torch.rand(*shape, generator=_gen(seed)) < p
    m.view(-1)[0] = True  # at least one counted position
    m.view(-1)[-1] = False  # at least one masked-out position
    return m


def _np(x):
    return x.detach().to(torch.float64).numpy()


def _call(kind, beta, s, t, **kw):
    if kind == "kl_div":
        return kl_div(s, t, **kw)
    if kind == "reverse_kl":
        return reverse_kl(s, t, **kw)
    return jsd(s, t, beta=beta, **kw)


def ref_log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    z = x - x.max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def ref_kl_rows(log_p, log_q):
    """Σ_v p_v (log p_v − log q_v) per row; terms with p_v = 0 are 0 by definition (0·log 0 = 0)."""
    p = np.exp(log_p)
    terms = np.zeros_like(p)
    nz = p > 0
    terms[nz] = p[nz] * (log_p[nz] - log_q[nz])
    return terms.sum(axis=-1)


def ref_div_rows(kind, beta, s, t, temperature=1.0):
    """Un-reduced, un-scaled (no T²) divergence per position, float64."""
    ls = ref_log_softmax(np.asarray(s, dtype=np.float64) / temperature)
    lt = ref_log_softmax(np.asarray(t, dtype=np.float64) / temperature)
    if kind == "kl_div" or (kind == "jsd" and beta == 0.0):
        return ref_kl_rows(lt, ls)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
        return ref_kl_rows(ls, lt)
    m = beta * np.exp(lt) + (1.0 - beta) * np.exp(ls)  # mixture in probability space
    with np.errstate(divide="ignore"):
        lm = np.log(m)
    return beta * ref_kl_rows(lt, lm) + (1.0 - beta) * ref_kl_rows(ls, lm)


def ref_reduce(rows, mask=None, reduction="mean"):
    rows = np.asarray(rows, dtype=np.float64).reshape(-1)
    if mask is not None:
        rows = rows[np.asarray(mask).reshape(-1).astype(bool)]
    if reduction == "sum":
        return float(rows.sum())
    return float(rows.mean()) if rows.size else 0.0


def ref_div(kind, beta, s, t, temperature=1.0, mask=None, reduction="mean"):
    rows = ref_div_rows(kind, beta, _np(s), _np(t), temperature)
    m = None if mask is None else mask.numpy()
    return temperature**2 * ref_reduce(rows, m, reduction)


def ref_ce(logits, labels, mask=None, reduction="mean"):
    logp = ref_log_softmax(_np(logits)).reshape(-1, logits.shape[-1])
    lab = labels.numpy().reshape(-1)
    keep = lab != -100
    if mask is not None:
        keep &= mask.numpy().reshape(-1).astype(bool)
    rows = -logp[np.nonzero(keep)[0], lab[keep]]
    return ref_reduce(rows, None, reduction)


def ref_softmax(x):
    return np.exp(ref_log_softmax(x))


def assert_scalar_close(actual, expected, rtol=1e-5, atol=1e-6):
    assert isinstance(actual, torch.Tensor)
    assert actual.dim() == 0, f"expected a scalar tensor, got shape {tuple(actual.shape)}"
    assert math.isfinite(actual.item()), actual
    assert actual.item() == pytest.approx(expected, rel=rtol, abs=atol)


# ----------------------------------------------------------------------------------------------------------------
# Output type
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,beta", DIVERGENCES, ids=DIV_IDS)
def test_divergences_return_float32_scalar(kind, beta):
    s, t = _logits((2, 3, 5), 0), _logits((2, 3, 5), 1)
    for mask in (None, _mask((2, 3), 2)):
        for reduction in ("mean", "sum"):
            out = _call(kind, beta, s, t, mask=mask, reduction=reduction)
            assert out.dim() == 0 and out.dtype == torch.float32


def test_other_losses_return_float32_scalar():
    logits, labels = _logits((2, 3, 5), 0), torch.randint(0, 5, (2, 3), generator=_gen(1))
    outs = [
        ce(logits, labels),
        ce(logits, labels, reduction="sum"),
        margin_mse(torch.randn(4), torch.randn(4), torch.randn(4), torch.randn(4)),
        margin_mse(torch.randn(4), torch.randn(4, 3), torch.randn(4), torch.randn(4, 3)),
        embedding_mse(torch.randn(4, 8), torch.randn(4, 8)),
        embedding_cosine(torch.randn(4, 8), torch.randn(4, 8)),
    ]
    for out in outs:
        assert out.dim() == 0 and out.dtype == torch.float32


# ----------------------------------------------------------------------------------------------------------------
# Zero on identical inputs
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,beta", DIVERGENCES, ids=DIV_IDS)
def test_divergence_zero_on_identical_inputs(kind, beta):
    s = _logits((3, 4, 9), 10)
    for temperature in (0.5, 1.0, 3.0):
        out = _call(kind, beta, s, s.clone(), temperature=temperature)
        assert abs(out.item()) < 1e-6


@pytest.mark.parametrize("beta", [0.0, 0.01, 0.25, 0.5, 0.75, 0.99, 1.0])
def test_jsd_zero_on_identical_inputs_for_many_betas(beta):
    s = _logits((2, 5, 7), 11)
    assert abs(jsd(s, s.clone(), beta=beta).item()) < 1e-6
    # Shifting all logits of a row by a constant leaves the distribution unchanged.
    assert abs(jsd(s, s + 5.0, beta=beta, temperature=2.0).item()) < 1e-5


def test_divergence_invariant_to_per_row_logit_shift():
    s, t = _logits((2, 3, 6), 12), _logits((2, 3, 6), 13)
    shift = torch.randn(2, 3, 1, generator=_gen(14)) * 10
    for kind, beta in DIVERGENCES:
        a = _call(kind, beta, s, t).item()
        b = _call(kind, beta, s + shift, t - shift).item()
        assert b == pytest.approx(a, rel=1e-4, abs=1e-5), kind


def test_margin_and_embedding_losses_zero_on_identical_inputs():
    x, y = torch.randn(5, generator=_gen(0)), torch.randn(5, 3, generator=_gen(1))
    assert margin_mse(x, y, x.clone(), y.clone()).item() == 0.0
    # Only the margin matters: shifting both teacher scores by the same constant changes nothing.
    assert abs(margin_mse(x, y, x + 7.0, y + 7.0).item()) < 1e-10
    e = torch.randn(4, 16, generator=_gen(2))
    assert embedding_mse(e, e.clone()).item() == 0.0
    assert abs(embedding_cosine(e, e.clone()).item()) < 1e-6
    # Cosine is scale invariant (positive scale).
    assert abs(embedding_cosine(e, 3.0 * e).item()) < 1e-6


# ----------------------------------------------------------------------------------------------------------------
# Hand-computed values (2-class examples)
# ----------------------------------------------------------------------------------------------------------------
# Student logits [0, 0]      -> p_s = [1/2, 1/2]
# Teacher logits [ln 3, 0]   -> p_t = [3/4, 1/4]
#
# forward KL(p_t || p_s) = 3/4·ln((3/4)/(1/2)) + 1/4·ln((1/4)/(1/2)) = 3/4·ln(3/2) − 1/4·ln 2
#                        = 0.75·0.4054651 − 0.25·0.6931472 = 0.1308120
# reverse KL(p_s || p_t) = 1/2·ln((1/2)/(3/4)) + 1/2·ln((1/2)/(1/4)) = 1/2·ln(2/3) + 1/2·ln 2
#                        = −0.2027326 + 0.3465736 = 0.1438410
# JSD β = 1/2: m = [5/8, 3/8]
#   KL(p_t || m) = 3/4·ln(6/5) + 1/4·ln(2/3) = 0.1367424 − 0.1013663 = 0.0353749
#   KL(p_s || m) = 1/2·ln(4/5) + 1/2·ln(4/3) = −0.1115718 + 0.1438410 = 0.0322693
#   JSD = ½·0.0353749 + ½·0.0322693 = 0.0338221
# JSD β = 1/4: m = 1/4·p_t + 3/4·p_s = [3/16 + 3/8, 1/16 + 3/8] = [9/16, 7/16]
#   KL(p_t || m) = 3/4·ln(4/3) + 1/4·ln(4/7) = 0.2157616 − 0.1399040 = 0.0758576
#   KL(p_s || m) = 1/2·ln(8/9) + 1/2·ln(8/7) = −0.0588915 + 0.0667657 = 0.0078742
#   JSD = 1/4·0.0758576 + 3/4·0.0078742 = 0.0248700   (swapping the β roles would give 0.0588618)
HAND_S = torch.tensor([[0.0, 0.0]])
HAND_T = torch.tensor([[LN3, 0.0]])
HAND_FWD = 0.13081203594113697
HAND_REV = 0.14384103622589042
HAND_JSD_HALF = 0.033822075568605205
HAND_JSD_QUARTER = 0.024870035701797136


def test_kl_direction_hand_values():
    fwd = kl_div(HAND_S, HAND_T)
    rev = reverse_kl(HAND_S, HAND_T)
    assert_scalar_close(fwd, HAND_FWD)
    assert_scalar_close(rev, HAND_REV)
    # The two directions are genuinely different here (0.1308 vs 0.1438) ...
    assert abs(fwd.item() - rev.item()) > 0.01
    # ... and swapping the arguments swaps the direction.
    assert_scalar_close(kl_div(HAND_T, HAND_S), HAND_REV)
    assert_scalar_close(reverse_kl(HAND_T, HAND_S), HAND_FWD)


def test_kl_hand_value_with_temperature():
    # Teacher logits [2 ln 3, 0] at T = 2 -> tempered logits [ln 3, 0] -> p_t = [3/4, 1/4]; student stays uniform.
    # Value = T² · 0.1308120 = 4 · 0.13081204 = 0.5232481.
    t = torch.tensor([[2 * LN3, 0.0]])
    assert_scalar_close(kl_div(HAND_S, t, temperature=2.0), 0.5232481437645479)
    # reverse: T² · 0.1438410 = 0.5753641
    assert_scalar_close(reverse_kl(HAND_S, t, temperature=2.0), 4 * HAND_REV)


def test_jsd_hand_values():
    assert_scalar_close(jsd(HAND_S, HAND_T, beta=0.5), HAND_JSD_HALF)
    assert_scalar_close(jsd(HAND_S, HAND_T), HAND_JSD_HALF)  # default beta is 0.5
    assert_scalar_close(jsd(HAND_S, HAND_T, beta=0.25), HAND_JSD_QUARTER)
    # Edge cases by definition: β = 0 is forward KL, β = 1 is reverse KL.
    assert_scalar_close(jsd(HAND_S, HAND_T, beta=0.0), HAND_FWD)
    assert_scalar_close(jsd(HAND_S, HAND_T, beta=1.0), HAND_REV)


def test_kl_docstring_example_value():
    # s = [0, 1] -> p_s = [σ(−1), σ(1)]; t = [1, 0] -> p_t = [σ(1), σ(−1)].
    # KL = σ(1)·(ln σ(1) − ln σ(−1)) + σ(−1)·(ln σ(−1) − ln σ(1)) = (σ(1) − σ(−1))·1 = 0.7310586 − 0.2689414 = 0.4621172
    s, t = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    assert_scalar_close(kl_div(s, t), 0.46211715726000974)
    assert_scalar_close(reverse_kl(s, t), 0.46211715726000974)


def test_ce_hand_values():
    # logits [0, ln 3] -> p = [1/4, 3/4]. Label 1: −ln(3/4) = 0.2876821; label 0: −ln(1/4) = ln 4 = 1.3862944.
    logits = torch.tensor([[0.0, LN3], [0.0, LN3], [5.0, -5.0]])
    labels = torch.tensor([1, 0, -100])
    # mean over the two counted rows = (0.2876821 + 1.3862944) / 2 = 0.8369882
    assert_scalar_close(ce(logits, labels), 0.8369882167858358)
    assert_scalar_close(ce(logits, labels, reduction="sum"), 1.6739764335716715)
    # A mask that drops the second row leaves only 0.2876821.
    assert_scalar_close(ce(logits, labels, mask=torch.tensor([True, False, True])), 0.2876820724517809)
    # Uniform over 2 classes: ln 2.
    assert_scalar_close(ce(torch.tensor([[0.0, 0.0]]), torch.tensor([1])), math.log(2.0))


def test_margin_mse_hand_values_signed_margin():
    # s_pos − s_neg = 1 − 3 = −2 ; t_pos − t_neg = 4 − 2 = +2 -> (−2 − 2)² = 16.
    # With absolute margins |−2| = |2| the loss would be 0, so this distinguishes the signed formula.
    one = margin_mse(torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([4.0]), torch.tensor([2.0]))
    assert_scalar_close(one, 16.0)
    # Batch: student margins [1−3, 2−0] = [−2, 2]; teacher margins [4−2, 1−1] = [2, 0];
    # squared errors [(−2−2)², (2−0)²] = [16, 4]; mean = 10.
    batch = margin_mse(
        torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0]), torch.tensor([4.0, 1.0]), torch.tensor([2.0, 1.0])
    )
    assert_scalar_close(batch, 10.0)
    # Docstring example: (2 − 1) − (5 − 3) = −1 -> 1.
    assert_scalar_close(
        margin_mse(torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([5.0]), torch.tensor([3.0])), 1.0
    )


def test_margin_mse_hand_value_multiple_negatives():
    # B = 1, n = 2. Student margins: 1 − [0, 2] = [1, −1]; teacher margins: 0 − [−1, 0] = [1, 0].
    # Squared errors: [(1 − 1)², (−1 − 0)²] = [0, 1]; mean over all elements = 0.5.
    out = margin_mse(torch.tensor([1.0]), torch.tensor([[0.0, 2.0]]), torch.tensor([0.0]), torch.tensor([[-1.0, 0.0]]))
    assert_scalar_close(out, 0.5)


def test_embedding_hand_values():
    # MSE: [[1, 2]] vs [[3, 5]] -> ((1−3)² + (2−5)²) / 2 = (4 + 9) / 2 = 6.5 (mean over ALL elements, not rows).
    assert_scalar_close(embedding_mse(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 5.0]])), 6.5)
    # Two rows: [[1, 2], [0, 0]] vs [[3, 5], [1, 1]] -> (4 + 9 + 1 + 1) / 4 = 3.75.
    assert_scalar_close(
        embedding_mse(torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[3.0, 5.0], [1.0, 1.0]])), 3.75
    )
    # Cosine: row 1: [1, 0]·[1, 1] / (1·√2) = 1/√2 -> 1 − 0.7071068 = 0.2928932;
    #         row 2: [1, 0] vs [−1, 0] -> cos = −1 -> 1 − (−1) = 2.   mean = (0.2928932 + 2) / 2 = 1.1464466
    out = embedding_cosine(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[1.0, 1.0], [-1.0, 0.0]]))
    assert_scalar_close(out, 1.1464466094067263)


# ----------------------------------------------------------------------------------------------------------------
# Random inputs vs float64 numpy references
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("kind,beta", DIVERGENCES, ids=DIV_IDS)
def test_divergence_matches_reference_3d(kind, beta, temperature):
    s, t = _logits((3, 5, 11), 20), _logits((3, 5, 11), 21)
    out = _call(kind, beta, s, t, temperature=temperature)
    assert_scalar_close(out, ref_div(kind, beta, s, t, temperature))


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.3, 0.7, 0.9, 0.99])
def test_jsd_matches_reference_for_many_betas(beta):
    s, t = _logits((3, 4, 12), 29), _logits((3, 4, 12), 30)
    mask = _mask((3, 4), 31)
    for temperature in (1.0, 2.0):
        for m in (None, mask):
            out = jsd(s, t, beta=beta, temperature=temperature, mask=m)
            assert_scalar_close(out, ref_div("jsd", beta, s, t, temperature, mask=m))


@pytest.mark.parametrize("temperature", [0.5, 2.0])
@pytest.mark.parametrize("kind,beta", DIVERGENCES, ids=DIV_IDS)
def test_divergence_matches_reference_2d_classifier(kind, beta, temperature):
    s, t = _logits((8, 4), 22), _logits((8, 4), 23)
    out = _call(kind, beta, s, t, temperature=temperature)
    assert_scalar_close(out, ref_div(kind, beta, s, t, temperature))


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("kind,beta", DIVERGENCES, ids=DIV_IDS)
def test_divergence_matches_reference_with_mask(kind, beta, temperature):
    s, t = _logits((3, 6, 10), 24), _logits((3, 6, 10), 25)
    mask = _mask((3, 6), 26)
    for reduction in ("mean", "sum"):
        out = _call(kind, beta, s, t, temperature=temperature, mask=mask, reduction=reduction)
        assert_scalar_close(out, ref_div(kind, beta, s, t, temperature, mask=mask, reduction=reduction))


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("kind,beta", DIVERGENCES, ids=DIV_IDS)
def test_temperature_squared_scaling(kind, beta, temperature):
    s, t = _logits((2, 4, 8), 27), _logits((2, 4, 8), 28)
    at_t = _call(kind, beta, s, t, temperature=temperature).item()
    # Un-scaled divergence of the tempered distributions softmax(s/T), softmax(t/T), computed in numpy ...
    unscaled = ref_reduce(ref_div_rows(kind, beta, _np(s) / temperature, _np(t) / temperature, 1.0))
    assert at_t == pytest.approx(temperature**2 * unscaled, rel=1e-5, abs=1e-6)
    # ... and by the function itself at T = 1 on pre-divided logits.
    at_one = _call(kind, beta, s / temperature, t / temperature, temperature=1.0).item()
    assert at_t == pytest.approx(temperature**2 * at_one, rel=1e-5, abs=1e-6)


def test_ce_matches_reference_with_ignore_index_and_mask():
    logits = _logits((4, 7, 13), 30)
    labels = torch.randint(0, 13, (4, 7), generator=_gen(31))
    labels[torch.rand(4, 7, generator=_gen(32)) < 0.3] = -100
    labels[0, 0] = 3  # at least one counted position
    mask = _mask((4, 7), 33)
    for m in (None, mask):
        for reduction in ("mean", "sum"):
            assert_scalar_close(ce(logits, labels, mask=m, reduction=reduction), ref_ce(logits, labels, m, reduction))


def test_ce_matches_reference_2d():
    logits, labels = _logits((16, 5), 34), torch.randint(0, 5, (16,), generator=_gen(35))
    assert_scalar_close(ce(logits, labels), ref_ce(logits, labels))


@pytest.mark.parametrize("n_neg", [None, 1, 4])
def test_margin_mse_matches_reference(n_neg):
    b = 6
    neg_shape = (b,) if n_neg is None else (b, n_neg)
    sp, tp = torch.randn(b, generator=_gen(40)), torch.randn(b, generator=_gen(41))
    sn, tn = torch.randn(*neg_shape, generator=_gen(42)), torch.randn(*neg_shape, generator=_gen(43))
    sp_, tp_ = _np(sp), _np(tp)
    if n_neg is not None:
        sp_, tp_ = sp_[:, None], tp_[:, None]
    expected = float(np.mean(((sp_ - _np(sn)) - (tp_ - _np(tn))) ** 2))
    assert_scalar_close(margin_mse(sp, sn, tp, tn), expected)


def test_margin_mse_is_signed_not_absolute_on_random_data():
    # Student ranks every pair the wrong way round with the same magnitude as the teacher.
    sp, sn = torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 3.0, 1.5])  # margins [-1, -3, -0.5]
    tp, tn = torch.tensor([1.0, 3.0, 1.5]), torch.tensor([0.0, 0.0, 1.0])  # margins [ 1,  3,  0.5]
    # Signed: mean((2·[-1, -3, -0.5])²) = (4 + 36 + 1) / 3 = 41/3; an |margin| implementation would give 0.
    assert_scalar_close(margin_mse(sp, sn, tp, tn), 41.0 / 3.0)


def test_embedding_losses_match_reference():
    s, t = torch.randn(7, 12, generator=_gen(50)), torch.randn(7, 12, generator=_gen(51))
    s_, t_ = _np(s), _np(t)
    assert_scalar_close(embedding_mse(s, t), float(np.mean((s_ - t_) ** 2)))
    cos = (s_ * t_).sum(-1) / (np.linalg.norm(s_, axis=-1) * np.linalg.norm(t_, axis=-1))
    assert_scalar_close(embedding_cosine(s, t), float(np.mean(1.0 - cos)))


# ----------------------------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.5, 2.0])
@pytest.mark.parametrize("kind,beta", DIVERGENCES, ids=DIV_IDS)
def test_mask_only_counted_positions_matter(kind, beta, temperature):
    s, t = _logits((3, 5, 9), 60), _logits((3, 5, 9), 61)
    mask = _mask((3, 5), 62)
    base = _call(kind, beta, s, t, temperature=temperature, mask=mask).item()
    # Scramble both models' logits at the masked-out positions (including huge values): value unchanged.
    s2, t2 = s.clone(), t.clone()
    off = ~mask
    s2[off] = _logits((int(off.sum()), 9), 63, scale=1e3)
    t2[off] = _logits((int(off.sum()), 9), 64, scale=1e3)
    assert _call(kind, beta, s2, t2, temperature=temperature, mask=mask).item() == pytest.approx(
        base, rel=1e-6, abs=1e-7
    )
    # The masked mean equals the unmasked mean over only the counted rows (mean over counted positions only).
    only = _call(kind, beta, s[mask], t[mask], temperature=temperature).item()
    assert base == pytest.approx(only, rel=1e-5, abs=1e-7)
    # And differs from the plain unmasked mean over all positions (the masked rows are not zero-padded in).
    full = _call(kind, beta, s, t, temperature=temperature).item()
    assert base != pytest.approx(full, rel=1e-3)


@pytest.mark.parametrize("kind,beta", DIVERGENCES, ids=DIV_IDS)
def test_mask_all_ones_equals_no_mask(kind, beta):
    s, t = _logits((2, 4, 6), 65), _logits((2, 4, 6), 66)
    full = torch.ones(2, 4, dtype=torch.bool)
    assert _call(kind, beta, s, t, mask=full).item() == pytest.approx(_call(kind, beta, s, t).item(), rel=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind,beta", DIVERGENCES + [("jsd", 0.0), ("jsd", 1.0)], ids=DIV_IDS + ["jsd-0", "jsd-1"])
def test_all_masked_gives_zero_no_nan(kind, beta, reduction):
    s = _logits((2, 3, 5), 67).requires_grad_(True)
    t = _logits((2, 3, 5), 68)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    out = _call(kind, beta, s, t, temperature=2.0, mask=mask, reduction=reduction)
    assert out.dim() == 0
    assert out.item() == 0.0
    if out.requires_grad:
        out.backward()
        assert s.grad is None or (torch.isfinite(s.grad).all() and (s.grad == 0).all())


@pytest.mark.parametrize("kind,beta", DIVERGENCES, ids=DIV_IDS)
def test_gradient_zero_at_masked_positions(kind, beta):
    s = _logits((3, 4, 7), 69).requires_grad_(True)
    t = _logits((3, 4, 7), 70)
    mask = _mask((3, 4), 71)
    _call(kind, beta, s, t, temperature=2.0, mask=mask).backward()
    assert torch.isfinite(s.grad).all()
    assert (s.grad[~mask] == 0).all()
    assert (s.grad[mask].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("kind,beta", DIVERGENCES, ids=DIV_IDS)
def test_sum_reduction_equals_mean_times_count(kind, beta):
    s, t = _logits((3, 5, 8), 72), _logits((3, 5, 8), 73)
    mask = _mask((3, 5), 74)
    count = int(mask.sum())
    for temperature in (1.0, 3.0):
        mean = _call(kind, beta, s, t, temperature=temperature, mask=mask).item()
        total = _call(kind, beta, s, t, temperature=temperature, mask=mask, reduction="sum").item()
        assert total == pytest.approx(mean * count, rel=1e-5)
        # No mask: count = B·L.
        mean = _call(kind, beta, s, t, temperature=temperature).item()
        total = _call(kind, beta, s, t, temperature=temperature, reduction="sum").item()
        assert total == pytest.approx(mean * 15, rel=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# ce: -100 labels and masks
# ----------------------------------------------------------------------------------------------------------------


def test_ce_ignored_positions_do_not_matter():
    logits = _logits((3, 6, 9), 80)
    labels = torch.randint(0, 9, (3, 6), generator=_gen(81))
    labels[:, ::2] = -100
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, 1] = False
    base = ce(logits, labels, mask=mask).item()
    ignored = (labels == -100) | ~mask
    scrambled = logits.clone()
    scrambled[ignored] = _logits((int(ignored.sum()), 9), 82, scale=1e3)
    assert ce(scrambled, labels, mask=mask).item() == pytest.approx(base, rel=1e-6)
    # Mean is over counted positions only: equals the plain ce of the counted rows.
    keep = ~ignored
    assert base == pytest.approx(ce(logits[keep], labels[keep]).item(), rel=1e-6)
    assert base == pytest.approx(ref_ce(logits, labels, mask), rel=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ce_all_ignored_gives_zero_no_nan(reduction):
    logits = _logits((2, 4, 5), 83).requires_grad_(True)
    labels = torch.full((2, 4), -100)
    out = ce(logits, labels, reduction=reduction)
    assert out.dim() == 0 and out.item() == 0.0
    # Everything masked by `mask` even though labels are valid.
    out2 = ce(
        logits, torch.zeros(2, 4, dtype=torch.long), mask=torch.zeros(2, 4, dtype=torch.bool), reduction=reduction
    )
    assert out2.item() == 0.0
    if out.requires_grad:
        out.backward()
        assert logits.grad is None or (logits.grad == 0).all()


def test_ce_sum_equals_mean_times_count():
    logits = _logits((3, 5, 7), 84)
    labels = torch.randint(0, 7, (3, 5), generator=_gen(85))
    labels[1, 2] = labels[2, 0] = -100
    mask = _mask((3, 5), 86)
    count = int(((labels != -100) & mask).sum())
    mean = ce(logits, labels, mask=mask).item()
    total = ce(logits, labels, mask=mask, reduction="sum").item()
    assert total == pytest.approx(mean * count, rel=1e-5)


def test_ce_gradient_closed_form():
    # d/dz mean_i(−log softmax(z_i)[y_i]) = (softmax(z_i) − onehot(y_i)) / N at counted rows, 0 elsewhere.
    logits = _logits((2, 5, 6), 87).requires_grad_(True)
    labels = torch.randint(0, 6, (2, 5), generator=_gen(88))
    labels[0, 1] = labels[1, 4] = -100
    ce(logits, labels).backward()
    keep = _np(labels != -100).astype(bool)
    n = keep.sum()
    expected = ref_softmax(_np(logits))
    onehot = np.zeros_like(expected)
    lab = labels.numpy()
    for i, j in zip(*np.nonzero(keep), strict=False):
        onehot[i, j, lab[i, j]] = 1.0
    expected = (expected - onehot) / n * keep[..., None]
    np.testing.assert_allclose(_np(logits.grad), expected, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------------------------
# JSD beta
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("with_mask", [False, True])
def test_jsd_beta_edge_cases_equal_kl_divergences(temperature, with_mask):
    s, t = _logits((3, 4, 8), 90), _logits((3, 4, 8), 91)
    mask = _mask((3, 4), 92) if with_mask else None
    kw = {"temperature": temperature, "mask": mask}
    j0, j1 = jsd(s, t, beta=0.0, **kw).item(), jsd(s, t, beta=1.0, **kw).item()
    fwd = ref_div("kl_div", None, s, t, temperature, mask)
    rev = ref_div("reverse_kl", None, s, t, temperature, mask)
    assert j0 == pytest.approx(fwd, rel=1e-5)
    assert j1 == pytest.approx(rev, rel=1e-5)
    assert j0 == pytest.approx(kl_div(s, t, **kw).item(), rel=1e-6)
    assert j1 == pytest.approx(reverse_kl(s, t, **kw).item(), rel=1e-6)
    # Integer end points behave like their float counterparts.
    assert jsd(s, t, beta=0, **kw).item() == pytest.approx(j0, rel=1e-6)
    assert jsd(s, t, beta=1, **kw).item() == pytest.approx(j1, rel=1e-6)


def test_jsd_continuous_near_half():
    s, t = _logits((2, 5, 10), 93), _logits((2, 5, 10), 94)
    mid = jsd(s, t, beta=0.5).item()
    for eps in (1e-2, 1e-3, 1e-4):
        lo, hi = jsd(s, t, beta=0.5 - eps).item(), jsd(s, t, beta=0.5 + eps).item()
        assert abs(lo - mid) < 10 * eps * max(mid, 1.0)
        assert abs(hi - mid) < 10 * eps * max(mid, 1.0)
        assert lo == pytest.approx(ref_div("jsd", 0.5 - eps, s, t), rel=1e-5)
        assert hi == pytest.approx(ref_div("jsd", 0.5 + eps, s, t), rel=1e-5)


@pytest.mark.parametrize("beta", [0.1, 0.3, 0.5, 0.8])
def test_jsd_role_swap_symmetry(beta):
    # β·KL(p_t||m) + (1−β)·KL(p_s||m) with m = β p_t + (1−β) p_s is invariant under (s, t, β) -> (t, s, 1−β).
    s, t = _logits((2, 3, 7), 95), _logits((2, 3, 7), 96)
    a = jsd(s, t, beta=beta, temperature=1.5).item()
    b = jsd(t, s, beta=1.0 - beta, temperature=1.5).item()
    assert a == pytest.approx(b, rel=1e-5)


def test_jsd_bounded_by_log2_at_half():
    # Symmetric JSD is at most ln 2 per position (at T = 1); very different distributions approach it.
    s = torch.tensor([[20.0, -20.0], [0.0, 0.0]])
    t = torch.tensor([[-20.0, 20.0], [0.0, 0.0]])
    out = jsd(s, t, beta=0.5).item()
    assert out <= math.log(2.0) + 1e-6
    assert out == pytest.approx(math.log(2.0) / 2, rel=1e-5)  # row 1 -> ln 2, row 2 -> 0


@pytest.mark.parametrize("beta", [-0.1, 1.1, -1.0, 2.0, float("nan"), float("inf"), float("-inf")])
def test_jsd_invalid_beta_raises(beta):
    s, t = _logits((2, 4), 97), _logits((2, 4), 98)
    with pytest.raises(ValueError, match="beta"):
        jsd(s, t, beta=beta)


# ----------------------------------------------------------------------------------------------------------------
# Asymmetry
# ----------------------------------------------------------------------------------------------------------------


def test_forward_and_reverse_kl_differ_and_swap():
    s, t = _logits((3, 4, 6), 100), _logits((3, 4, 6), 101)
    fwd, rev = kl_div(s, t).item(), reverse_kl(s, t).item()
    assert abs(fwd - rev) > 1e-3 * max(fwd, rev)
    assert fwd == pytest.approx(reverse_kl(t, s).item(), rel=1e-6)
    assert rev == pytest.approx(kl_div(t, s).item(), rel=1e-6)


def test_kl_direction_mass_covering_example():
    # Teacher bimodal p_t = [1/2, 1/2, 0⁺]; student concentrated p_s ≈ [1, 0, 0].
    # Forward KL(p_t||p_s) is large (teacher mass where student has none); reverse KL(p_s||p_t) ≈ ln 2.
    t = torch.tensor([[0.0, 0.0, -30.0]])
    s = torch.tensor([[0.0, -10.0, -10.0]])
    fwd, rev = kl_div(s, t).item(), reverse_kl(s, t).item()
    assert fwd == pytest.approx(ref_div("kl_div", None, s, t), rel=1e-5)
    assert rev == pytest.approx(ref_div("reverse_kl", None, s, t), rel=1e-5)
    assert fwd > 4.0
    assert rev < 1.0
    assert rev == pytest.approx(math.log(2.0), abs=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# dtype safety
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind,beta", DIVERGENCES + [("jsd", 0.0), ("jsd", 1.0)], ids=DIV_IDS + ["jsd-0", "jsd-1"])
def test_low_precision_logits_give_float32_result(kind, beta, dtype):
    s, t = _logits((2, 6, 32), 110).to(dtype), _logits((2, 6, 32), 111).to(dtype)
    mask = _mask((2, 6), 112)
    out = _call(kind, beta, s, t, temperature=2.0, mask=mask)
    assert out.dtype == torch.float32
    ref32 = _call(kind, beta, s.float(), t.float(), temperature=2.0, mask=mask)
    assert out.item() == pytest.approx(ref32.item(), rel=1e-5, abs=1e-6)
    assert out.item() == pytest.approx(ref_div(kind, beta, s.float(), t.float(), 2.0, mask), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_other_losses_give_float32_result(dtype):
    logits = _logits((2, 6, 32), 113).to(dtype)
    labels = torch.randint(0, 32, (2, 6), generator=_gen(114))
    out = ce(logits, labels)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref_ce(logits.float(), labels), rel=1e-5)

    sp, sn, tp, tn = (torch.randn(*shp, generator=_gen(115 + i)).to(dtype) for i, shp in enumerate([(8,), (8, 3)] * 2))
    out = margin_mse(sp, sn, tp, tn)
    assert out.dtype == torch.float32
    expected = float(np.mean(((_np(sp)[:, None] - _np(sn)) - (_np(tp)[:, None] - _np(tn))) ** 2))
    assert out.item() == pytest.approx(expected, rel=1e-5)

    a, b = torch.randn(5, 64, generator=_gen(120)).to(dtype), torch.randn(5, 64, generator=_gen(121)).to(dtype)
    out = embedding_mse(a, b)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(float(np.mean((_np(a) - _np(b)) ** 2)), rel=1e-5)
    out = embedding_cosine(a, b)
    assert out.dtype == torch.float32
    a_, b_ = _np(a), _np(b)
    cos = (a_ * b_).sum(-1) / (np.linalg.norm(a_, axis=-1) * np.linalg.norm(b_, axis=-1))
    assert out.item() == pytest.approx(float(np.mean(1 - cos)), rel=1e-5, abs=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Numerical edge cases: -inf logits, large logits
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("kind,beta", [("kl_div", None), ("jsd", 0.0), ("jsd", 0.25), ("jsd", 0.5), ("jsd", 0.75)])
def test_minus_inf_teacher_logit_is_finite(kind, beta, temperature):
    # Teacher gives probability exactly 0 to some classes: 0·log 0 = 0 by definition, so the value is finite.
    s = _logits((2, 3, 6), 130).requires_grad_(True)
    t = _logits((2, 3, 6), 131)
    t[0, 0, 2] = float("-inf")
    t[1, 2, 0] = float("-inf")
    t[1, 2, 5] = float("-inf")
    out = _call(kind, beta, s, t, temperature=temperature)
    assert torch.isfinite(out)
    assert_scalar_close(out, ref_div(kind, beta, s, t, temperature))
    out.backward()
    assert torch.isfinite(s.grad).all()


def test_minus_inf_hand_value():
    # Teacher [0, 0, −inf] -> p_t = [1/2, 1/2, 0]; student [0, 0, 0] -> p_s = [1/3, 1/3, 1/3].
    # KL(p_t||p_s) = 2 · 1/2 · ln((1/2)/(1/3)) + 0 = ln(3/2) = 0.4054651
    s, t = torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, float("-inf")]])
    assert_scalar_close(kl_div(s, t), math.log(1.5))
    # JSD β=½: m = [5/12, 5/12, 1/6].
    # KL(p_t||m) = 2·½·ln((1/2)/(5/12)) = ln(6/5) = 0.1823216
    # KL(p_s||m) = 2·⅓·ln((1/3)/(5/12)) + ⅓·ln((1/3)/(1/6)) = ⅔·ln(4/5) + ⅓·ln 2 = −0.1487624 + 0.2310491 = 0.0822867
    # JSD = ½(0.1823216 + 0.0822867) = 0.1323041
    expected = 0.5 * (math.log(6 / 5) + (2 / 3) * math.log(4 / 5) + (1 / 3) * math.log(2.0))
    assert_scalar_close(jsd(s, t, beta=0.5), expected)


@pytest.mark.parametrize("kind,beta", DIVERGENCES + [("jsd", 0.0), ("jsd", 1.0)], ids=DIV_IDS + ["jsd-0", "jsd-1"])
def test_minus_inf_in_both_models_at_same_class_is_finite(kind, beta):
    # Both models give the class zero probability: every divergence, reverse KL included, is defined and finite.
    s, t = _logits((2, 3, 5), 132), _logits((2, 3, 5), 133)
    s[:, :, 1] = float("-inf")
    t[:, :, 1] = float("-inf")
    out = _call(kind, beta, s, t)
    assert torch.isfinite(out)
    assert_scalar_close(out, ref_div(kind, beta, s, t))


@pytest.mark.parametrize("kind,beta", DIVERGENCES + [("jsd", 0.0), ("jsd", 1.0)], ids=DIV_IDS + ["jsd-0", "jsd-1"])
def test_large_logits_stay_finite(kind, beta):
    signs = torch.randint(0, 2, (2, 3, 7), generator=_gen(140)) * 2 - 1
    t = (torch.randint(0, 2, (2, 3, 7), generator=_gen(141)) * 2 - 1).float() * 1e4
    t[0, 0] = signs[0, 0] * 1e4  # one row identical (contribution 0)
    for temperature in (0.5, 1.0, 4.0):
        s = (signs * 1e4).float().requires_grad_(True)
        out = _call(kind, beta, s, t, temperature=temperature)
        assert torch.isfinite(out)
        assert out.item() == pytest.approx(ref_div(kind, beta, s, t, temperature), rel=1e-5, abs=1e-3)
        out.backward()
        assert torch.isfinite(s.grad).all()


def test_large_logits_ce_finite():
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]]).requires_grad_(True)
    labels = torch.tensor([1, 2])
    # Row 1: −log softmax = 1e4 − (−1e4) = 2e4 (others negligible); row 2: ln 2.  mean = (2e4 + ln 2) / 2
    out = ce(logits, labels)
    assert torch.isfinite(out)
    assert out.item() == pytest.approx((2e4 + math.log(2.0)) / 2, rel=1e-6)
    out.backward()
    assert torch.isfinite(logits.grad).all()


# ----------------------------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,beta", DIVERGENCES + [("jsd", 0.0), ("jsd", 1.0)], ids=DIV_IDS + ["jsd-0", "jsd-1"])
def test_gradient_flows_to_student_not_teacher(kind, beta):
    s = _logits((2, 3, 5), 150).requires_grad_(True)
    t = _logits((2, 3, 5), 151)
    assert not t.requires_grad
    out = _call(kind, beta, s, t, temperature=2.0)
    assert out.requires_grad
    out.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


def test_gradient_flows_for_other_losses():
    logits = _logits((2, 3, 5), 152).requires_grad_(True)
    ce(logits, torch.randint(0, 5, (2, 3), generator=_gen(153))).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0

    sp, sn = torch.randn(4, requires_grad=True), torch.randn(4, 2, requires_grad=True)
    tp, tn = torch.randn(4), torch.randn(4, 2)
    margin_mse(sp, sn, tp, tn).backward()
    assert sp.grad is not None and sn.grad is not None and tp.grad is None and tn.grad is None

    a, b = torch.randn(3, 8, requires_grad=True), torch.randn(3, 8)
    (embedding_mse(a, b) + embedding_cosine(a, b)).backward()
    assert a.grad is not None and a.grad.abs().sum() > 0 and b.grad is None


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("with_mask", [False, True])
def test_kl_div_gradient_closed_form(temperature, with_mask):
    # ∂/∂z_s [T² · mean_i KL(p_t,i || softmax(z_s,i / T))] = T² · (1/T) · (p_s,i − p_t,i) / N = T · (p_s − p_t) / N,
    # which at T = 1 is the classic (p_s − p_t) / N; N = number of counted positions, 0 at masked positions.
    s = _logits((3, 4, 6), 160).requires_grad_(True)
    t = _logits((3, 4, 6), 161)
    mask = _mask((3, 4), 162) if with_mask else None
    kl_div(s, t, temperature=temperature, mask=mask).backward()
    keep = np.ones((3, 4)) if mask is None else mask.numpy().astype(np.float64)
    n = keep.sum()
    p_s, p_t = ref_softmax(_np(s) / temperature), ref_softmax(_np(t) / temperature)
    expected = temperature * (p_s - p_t) / n * keep[..., None]
    np.testing.assert_allclose(_np(s.grad), expected, rtol=1e-5, atol=1e-7)


def test_kl_div_gradient_sum_reduction_closed_form():
    # With reduction="sum" there is no 1/N: gradient is (p_s − p_t) at T = 1.
    s = _logits((2, 5, 4), 163).requires_grad_(True)
    t = _logits((2, 5, 4), 164)
    kl_div(s, t, reduction="sum").backward()
    np.testing.assert_allclose(_np(s.grad), ref_softmax(_np(s)) - ref_softmax(_np(t)), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------------------------
# Argument validation
# ----------------------------------------------------------------------------------------------------------------

BAD_TEMPERATURES = [0, 0.0, -1.0, -0.5, float("nan"), float("inf"), float("-inf")]


@pytest.mark.parametrize("temperature", BAD_TEMPERATURES)
@pytest.mark.parametrize(
    "kind,beta", [("kl_div", None), ("reverse_kl", None), ("jsd", 0.5), ("jsd", 0.0), ("jsd", 1.0)]
)
def test_invalid_temperature_raises(kind, beta, temperature):
    s, t = _logits((2, 4), 170), _logits((2, 4), 171)
    with pytest.raises(ValueError, match="temperature"):
        _call(kind, beta, s, t, temperature=temperature)


@pytest.mark.parametrize(
    "kind,beta", [("kl_div", None), ("reverse_kl", None), ("jsd", 0.5), ("jsd", 0.0), ("jsd", 1.0)]
)
def test_divergence_shape_mismatch_raises(kind, beta):
    with pytest.raises(ValueError):
        _call(kind, beta, torch.zeros(2, 3, 5), torch.zeros(2, 3, 6))  # vocabulary differs
    with pytest.raises(ValueError):
        _call(kind, beta, torch.zeros(2, 3, 5), torch.zeros(2, 4, 5))  # sequence length differs
    with pytest.raises(ValueError):
        _call(kind, beta, torch.zeros(2, 3, 5), torch.zeros(1, 3, 5))  # would broadcast
    with pytest.raises(ValueError):
        _call(kind, beta, torch.zeros(2, 3, 5), torch.zeros(2, 3, 5), mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError):
        _call(kind, beta, torch.zeros(2, 3, 5), torch.zeros(2, 3, 5), mask=torch.ones(3, dtype=torch.bool))


def test_ce_shape_mismatch_raises():
    logits = torch.zeros(2, 3, 5)
    with pytest.raises(ValueError):
        ce(logits, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError):
        ce(logits, torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError):
        ce(logits, torch.zeros(2, 3, dtype=torch.long), mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError):
        ce(logits, torch.zeros(2, 3, dtype=torch.long), mask=torch.ones(3, dtype=torch.bool))  # would broadcast


@pytest.mark.parametrize(
    "shapes",
    [
        ((4,), (4,), (5,), (5,)),  # batch size differs between student and teacher
        ((4,), (4, 3), (4,), (4, 2)),  # number of negatives differs
        ((4,), (4,), (4,), (1,)),  # teacher_neg would broadcast
        ((4,), (3,), (4,), (3,)),  # pos and neg batch differ
    ],
)
def test_margin_mse_shape_mismatch_raises(shapes):
    sp, sn, tp, tn = (torch.zeros(*shp) for shp in shapes)
    with pytest.raises(ValueError):
        margin_mse(sp, sn, tp, tn)


@pytest.mark.parametrize("loss", [embedding_mse, embedding_cosine])
@pytest.mark.parametrize("shapes", [((2, 3), (2, 4)), ((2, 3), (1, 3)), ((2, 3), (3, 3))])
def test_embedding_shape_mismatch_raises(loss, shapes):
    with pytest.raises(ValueError):
        loss(torch.randn(*shapes[0]), torch.randn(*shapes[1]))


@pytest.mark.parametrize("kind,beta", [("kl_div", None), ("reverse_kl", None), ("jsd", 0.5)])
def test_invalid_reduction_raises(kind, beta):
    s = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="reduction"):
        _call(kind, beta, s, s, reduction="none")
    with pytest.raises(ValueError, match="reduction"):
        ce(s, torch.zeros(2, dtype=torch.long), reduction="batchmean")


# ---- adaptive_kd: KD and CE mixed per sample by the teacher's confidence / correctness ------------------------------


def test_adaptive_kd_confidence_mixes_kd_and_ce_by_the_teachers_gold_probability():
    s = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    t = torch.tensor([[1.0, 3.0, 0.0], [0.0, 0.0, 2.0]])
    y = torch.tensor([1, 0])
    temperature = 2.0
    expected = []
    for row in range(2):
        alpha = torch.softmax(t[row], -1)[y[row]]
        p_t = torch.softmax(t[row] / temperature, -1)
        kd = (p_t * (p_t.log() - torch.log_softmax(s[row] / temperature, -1))).sum() * temperature**2
        cross_entropy = -torch.log_softmax(s[row], -1)[y[row]]
        expected.append(alpha * kd + (1 - alpha) * cross_entropy)
    got = losses.adaptive_kd(s, t, y, temperature=temperature)
    torch.testing.assert_close(got, torch.stack(expected).mean())
    torch.testing.assert_close(losses.adaptive_kd(s, t, y, temperature=temperature, reduction="sum"),
                               torch.stack(expected).sum())


def test_adaptive_kd_correctness_is_pure_kd_where_right_and_pure_ce_where_wrong():
    s = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    t = torch.tensor([[1.0, 3.0, 0.0], [0.0, 0.0, 2.0]])  # right on row 0 (label 1), wrong on row 1 (label 0)
    y = torch.tensor([1, 0])
    got = losses.adaptive_kd(s, t, y, rule="correctness", reduction="sum")
    expected = losses.kl_div(s[:1], t[:1], reduction="sum") + losses.ce(s[1:], y[1:], reduction="sum")
    torch.testing.assert_close(got, expected)


def test_adaptive_kd_ignores_masked_positions_and_rejects_bad_rules():
    s, t = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(0)), torch.randn(2, 4, 5)
    y = torch.tensor([[1, 2, -100, 0], [4, -100, -100, 3]])
    keep = y != -100
    torch.testing.assert_close(losses.adaptive_kd(s, t, y), losses.adaptive_kd(s[keep], t[keep], y[keep]))
    assert losses.adaptive_kd(s, s, torch.full((2, 4), -100)).item() == 0.0
    with pytest.raises(ValueError, match="`rule` must be one of confidence, correctness"):
        losses.adaptive_kd(s, t, y, rule="trust")
