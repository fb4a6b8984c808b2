"""The pure TIDE losses against plain, obviously-correct implementations written
here (value and gradient, float32 and bfloat16), plus analytic identities."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tide_plugin import logits as logits_rows
from tide_plugin.objectives import functional as fn

TOL = {
    # value: the functions compute in float32 from the same (rounded) inputs.
    # grad: the fused gradient is stored in the logits' dtype (bf16: 8 bits).
    torch.float32: dict(value=dict(rtol=1e-5, atol=1e-6), grad=dict(rtol=1e-4, atol=1e-7)),
    torch.bfloat16: dict(value=dict(rtol=1e-5, atol=1e-6), grad=dict(rtol=1.6e-2, atol=1e-5)),
}
DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(params=[16, fn.ROW_CHUNK_ELEMENTS], ids=["tiny_row_chunks", "default_row_chunks"])
def row_chunks(request, monkeypatch):
    """Run each test once with row chunks of 1-2 rows (many chunks) and once with the default."""
    monkeypatch.setattr(logits_rows, "ROW_CHUNK_ELEMENTS", request.param)
    return request.param


def _logits(*shape, dtype, seed, scale=3.0, grad=False):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, generator=g) * scale).to(dtype)
    return x.requires_grad_(grad)


def _mask(b, length, seed, p=0.5):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, length, generator=g) < p


# -- plain reference implementations --------------------------------------------
def plain_token_kl(s, t, mask, tau, v, reverse=False):
    zs = s[mask][:, :v].float() / tau
    zt = t.detach()[mask][:, :v].float() / tau
    if zs.shape[0] == 0:
        return s.sum().float() * 0.0
    log_ps, log_pt = zs.log_softmax(-1), zt.log_softmax(-1)
    if reverse:
        kl = (log_ps.exp() * (log_ps - log_pt)).sum(-1)
    else:  # torch's own KL(target || input) with a log-space target
        kl = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(-1)
    return kl.mean() * tau**2


def plain_tidal_kl(s, t, mask, lam, weight, tau, v):
    b_idx = mask.nonzero()[:, 0]
    zs = s[mask][:, :v].float()
    zt = t.detach()[mask][:, :v].float()
    lam_r, w_r = lam[b_idx][:, None], weight[b_idx]
    r = torch.softmax(((1 - lam_r) * zs + lam_r * zt) / tau, -1).detach()
    log_ps = (zs / tau).log_softmax(-1)
    kl = (r * (r.log() - log_ps)).sum(-1)
    return (w_r * kl).sum() / max(1, zs.shape[0]) * tau**2


def plain_chunk_log_probs(logits, ids, chunk_ids, num_chunks):
    lp = logits.float().log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)  # [b, L]
    out = torch.zeros(logits.shape[0], num_chunks)
    rows = []
    for bi in range(logits.shape[0]):
        row = []
        for c in range(num_chunks):
            sel = chunk_ids[bi] == c
            row.append(lp[bi][sel].sum())
        rows.append(torch.stack(row) if row else out[bi])
    return torch.stack(rows)


def plain_calm(lp_s, lp_t, mask, tau, reverse=False):
    s = torch.exp(lp_s.float() / tau).clamp(1e-7, 1 - 1e-7)
    q = torch.exp(lp_t.detach().float() / tau).clamp(1e-7, 1 - 1e-7)
    if reverse:
        loss = -(s * torch.log(q) + (1 - s) * torch.log(1 - q))
    else:
        loss = -(q * torch.log(s) + (1 - q) * torch.log(1 - s))
    return loss[mask].sum() / max(1, int(mask.sum()))


def plain_tidal_calm(lp_s, lp_t, mask, lam, weight, tau, reverse=False):
    s = torch.exp(lp_s.float() / tau).clamp(1e-7, 1 - 1e-7)
    q = torch.exp(lp_t.detach().float() / tau).clamp(1e-7, 1 - 1e-7)
    m = ((1 - lam[:, None]) * s + lam[:, None] * q).clamp(1e-7, 1 - 1e-7).detach()
    if reverse:  # the reference's reverse_alm_taid
        loss = -(s * torch.log(m) + (1 - s) * torch.log(1 - m)) * weight[:, None]
    else:
        loss = -(m * torch.log(s) + (1 - m) * torch.log(1 - s)) * weight[:, None]
    return loss[mask].sum() / max(1, int(mask.sum()))


def _value_and_grad(f, x):
    x.grad = None
    out = f(x)
    out.backward()
    return out.detach(), x.grad.detach().to(torch.promote_types(x.dtype, torch.float32)).clone()


# -- token KL -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shared", [None, 7])
def test_token_kl_matches_plain(dtype, reverse, shared, row_chunks):
    b, length, vs, vt = 3, 7, 11, 13
    s = _logits(b, length, vs, dtype=dtype, seed=1, grad=True)
    t = _logits(b, length, vt, dtype=dtype, seed=2)
    mask = _mask(b, length, seed=3)
    tau = 2.0
    v = shared or min(vs, vt)
    got, g_got = _value_and_grad(
        lambda x: fn.token_kl(x, t, mask, temperature=tau, shared_vocab_size=shared, reverse=reverse), s
    )
    want, g_want = _value_and_grad(lambda x: plain_token_kl(x, t, mask, tau, v, reverse), s)
    assert got.dtype == torch.float32 and got.dim() == 0
    torch.testing.assert_close(got, want.float(), **TOL[dtype]["value"])
    torch.testing.assert_close(g_got, g_want, **TOL[dtype]["grad"])
    # columns beyond the shared slice and unmasked rows get exactly zero gradient
    assert (g_got[..., v:] == 0).all()
    assert (g_got[~mask] == 0).all()
    assert (g_got[mask][:, :v] != 0).any()


@pytest.mark.parametrize("reverse", [False, True])
def test_token_kl_temperature_and_grad_scale(reverse):
    s = _logits(2, 5, 9, dtype=torch.float32, seed=4, grad=True)
    t = _logits(2, 5, 9, dtype=torch.float32, seed=5)
    mask = _mask(2, 5, seed=6, p=0.7)
    for tau in (0.5, 1.0, 5.0):
        got = fn.token_kl(s, t, mask, temperature=tau, reverse=reverse)
        torch.testing.assert_close(got, plain_token_kl(s, t, mask, tau, 9, reverse).detach())
    # a grad_output other than 1 scales the stored gradient
    _, g1 = _value_and_grad(lambda x: fn.token_kl(x, t, mask, reverse=reverse), s)
    _, g3 = _value_and_grad(lambda x: 3.0 * fn.token_kl(x, t, mask, reverse=reverse), s)
    torch.testing.assert_close(g3, 3 * g1)
    # the scaling happens in place: a second backward through a retained graph is refused
    # rather than returning a gradient scaled twice; with grad_output 1 it is exact twice
    s.grad = None
    loss = 3.0 * fn.token_kl(s, t, mask, reverse=reverse)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    s.grad = None
    loss = fn.token_kl(s, t, mask, reverse=reverse)
    loss.backward(retain_graph=True)
    loss.backward()
    torch.testing.assert_close(s.grad, 2 * g1)


def test_token_kl_non_contiguous_student_half():
    """The student logits are the x_t half of a [b, 2L, V] output: a non-contiguous view."""
    full = _logits(3, 14, 11, dtype=torch.float32, seed=7, grad=True)
    t = _logits(3, 7, 11, dtype=torch.float32, seed=8)
    mask = _mask(3, 7, seed=9)
    got, g_got = _value_and_grad(lambda x: fn.token_kl(x[:, :7], t, mask), full)
    want, g_want = _value_and_grad(lambda x: plain_token_kl(x[:, :7], t, mask, 2.0, 11), full)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g_got, g_want)
    assert g_got[:, 7:].abs().max() == 0


@pytest.mark.parametrize("fun", ["forward", "reverse", "tidal"])
def test_token_losses_gradcheck_float64(fun):
    s = _logits(2, 3, 5, dtype=torch.float64, seed=10, grad=True)
    t = _logits(2, 3, 6, dtype=torch.float64, seed=11)
    mask = torch.tensor([[True, False, True], [True, True, False]])
    lam = torch.tensor([0.3, 0.8], dtype=torch.float64)
    w = torch.tensor([1.0, 0.5], dtype=torch.float64)
    if fun == "tidal":
        # R is a stop-gradient target: compare with the plain version's autograd instead of finite differences
        got, g_got = _value_and_grad(lambda x: fn.tidal_kl(x, t, mask, lam, weight=w, shared_vocab_size=4), s)
        s64 = s.detach().clone().requires_grad_(True)
        b_idx = mask.nonzero()[:, 0]
        zs, zt = s64[mask][:, :4], t[mask][:, :4]
        r = torch.softmax(((1 - lam[b_idx, None]) * zs + lam[b_idx, None] * zt) / 2, -1).detach()
        want = (w[b_idx] * (r * (r.log() - (zs / 2).log_softmax(-1))).sum(-1)).sum() / 4 * 4
        want.backward()
        torch.testing.assert_close(g_got.double(), s64.grad)
        torch.testing.assert_close(got, want.detach())
    else:
        assert torch.autograd.gradcheck(
            lambda x: fn.token_kl(x, t, mask, shared_vocab_size=4, reverse=fun == "reverse").double(), (s,)
        )


def test_token_kl_teacher_with_impossible_tokens():
    """A teacher that rules tokens out (-inf logits) gives 0 log 0 = 0 terms, not NaN."""
    s = _logits(2, 5, 9, dtype=torch.float32, seed=40, grad=True)
    t = _logits(2, 5, 9, dtype=torch.float32, seed=41)
    t[..., :3] = float("-inf")
    mask = _mask(2, 5, seed=42, p=0.7)
    loss = fn.token_kl(s, t, mask)
    loss.backward()
    log_ps = (s.detach()[mask] / 2).log_softmax(-1)
    p_t = (t[mask] / 2).softmax(-1)
    want = (torch.xlogy(p_t, p_t) - p_t * log_ps).sum(-1).mean() * 4
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    torch.testing.assert_close(loss.detach(), want)
    lam = torch.full((2,), 1.0)
    torch.testing.assert_close(fn.tidal_kl(s, t, mask, lam).detach(), want)


@pytest.mark.parametrize("reverse", [False, True])
def test_token_kl_identical_is_zero(reverse):
    s = _logits(3, 7, 11, dtype=torch.float32, seed=12, grad=True)
    mask = _mask(3, 7, seed=13)
    # teacher with a longer vocabulary whose shared slice equals the student's
    t = torch.cat([s.detach(), torch.randn(3, 7, 4)], dim=-1)
    loss = fn.token_kl(s, t, mask, reverse=reverse)
    loss.backward()
    assert abs(loss.item()) < 1e-6
    assert s.grad.abs().max() < 1e-6


@pytest.mark.parametrize("f", ["kl", "reverse", "tidal"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_token_losses_empty_mask(f, dtype):
    s = _logits(3, 7, 11, dtype=dtype, seed=14, grad=True)
    t = _logits(3, 7, 11, dtype=dtype, seed=15)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    if f == "tidal":
        loss = fn.tidal_kl(s, t, mask, torch.full((3,), 0.5))
    else:
        loss = fn.token_kl(s, t, mask, reverse=f == "reverse")
    assert loss.item() == 0.0 and loss.dtype == torch.float32
    loss.backward()
    assert s.grad is not None and s.grad.shape == s.shape
    assert torch.isfinite(s.grad.float()).all() and s.grad.abs().max() == 0


# -- token TIDAL ----------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shared", [None, 6])
def test_tidal_kl_matches_plain(dtype, shared, row_chunks):
    b, length, vs, vt = 3, 7, 11, 9
    s = _logits(b, length, vs, dtype=dtype, seed=16, grad=True)
    t = _logits(b, length, vt, dtype=dtype, seed=17)
    mask = _mask(b, length, seed=18)
    lam = torch.tensor([0.0, 0.45, 0.9])
    w = torch.exp(-((torch.tensor([0.2, 0.5, 0.7]) - 0.5) ** 2) / (2 * 0.15**2))  # a midrange omega(t)
    v = shared or min(vs, vt)
    got, g_got = _value_and_grad(
        lambda x: fn.tidal_kl(x, t, mask, lam, weight=w, temperature=1.5, shared_vocab_size=shared), s
    )
    want, g_want = _value_and_grad(lambda x: plain_tidal_kl(x, t, mask, lam, w, 1.5, v), s)
    torch.testing.assert_close(got, want, **TOL[dtype]["value"])
    torch.testing.assert_close(g_got, g_want, **TOL[dtype]["grad"])


def test_tidal_kl_limits():
    """lam = 0: the target is the student itself (0 loss); lam = 1: forward KL."""
    s = _logits(3, 7, 11, dtype=torch.float32, seed=19, grad=True)
    t = _logits(3, 7, 11, dtype=torch.float32, seed=20)
    mask = _mask(3, 7, seed=21)
    assert abs(fn.tidal_kl(s, t, mask, torch.zeros(3)).item()) < 1e-6
    torch.testing.assert_close(fn.tidal_kl(s, t, mask, torch.ones(3)), fn.token_kl(s, t, mask))
    # a scalar lam broadcasts over the batch
    torch.testing.assert_close(fn.tidal_kl(s, t, mask, torch.tensor(1.0)), fn.token_kl(s, t, mask))


def test_token_divergence_pairs_match_gathered_plain():
    """Template pairs: student row i vs teacher row j, without gathering copies."""
    s = _logits(2, 6, 9, dtype=torch.float32, seed=22, grad=True)
    t = _logits(2, 8, 10, dtype=torch.float32, seed=23)
    pair_s = torch.tensor([[0, 2, 3, 5], [1, 4, 5, 0]])
    pair_t = torch.tensor([[1, 3, 4, 7], [2, 5, 7, 0]])
    pair_m = torch.tensor([[True, True, True, True], [True, True, True, False]])
    masked = torch.tensor([[1, 0, 0, 1, 0, 1], [0, 1, 0, 0, 1, 1]], dtype=torch.bool)
    b_idx, sp, tp = fn.aligned_rows(pair_s, pair_t, pair_m, masked)
    assert b_idx.tolist() == [0, 0, 0, 1, 1, 1] and sp.tolist() == [0, 3, 5, 1, 4, 5]
    for mode in ("forward", "reverse"):
        got, g_got = _value_and_grad(
            lambda x: fn.token_divergence(x, t, b_idx, sp, tp, mode=mode, shared_vocab_size=8), s
        )

        def plain(x):
            xs, xt = x[b_idx, sp][:, :8] / 2, t[b_idx, tp][:, :8] / 2
            ls, lt = xs.log_softmax(-1), xt.log_softmax(-1)
            kl = (lt.exp() * (lt - ls)).sum(-1) if mode == "forward" else (ls.exp() * (ls - lt)).sum(-1)
            return kl.mean() * 4

        want, g_want = _value_and_grad(plain, s)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(g_got, g_want)


# -- chunk log-probs --------------------------------------------------------------
def _chunks(b, length, num_chunks, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(-1, num_chunks, (b, length), generator=g)
    return ids


@pytest.mark.parametrize("dtype", DTYPES)
def test_chunk_log_probs_matches_plain(dtype, row_chunks):
    b, length, v, c = 3, 7, 11, 4
    x = _logits(b, length, v, dtype=dtype, seed=24, grad=True)
    ids = torch.randint(0, v, (b, length), generator=torch.Generator().manual_seed(25))
    chunk_ids = _chunks(b, length, c, seed=26)
    coef = torch.randn(b, c, generator=torch.Generator().manual_seed(27))  # a non-trivial grad_output
    got = fn.chunk_log_probs(x, ids, chunk_ids, c)
    want = plain_chunk_log_probs(x, ids, chunk_ids, c)
    assert got.shape == (b, c) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, **TOL[dtype]["value"])
    (g_got,) = torch.autograd.grad((got * coef).sum(), x)
    (g_want,) = torch.autograd.grad((want * coef).sum(), x)
    torch.testing.assert_close(g_got.float(), g_want.float(), **TOL[dtype]["grad"])
    assert (g_got[chunk_ids < 0] == 0).all()


def test_chunk_log_probs_gradcheck_float64():
    x = _logits(2, 5, 6, dtype=torch.float64, seed=28, grad=True)
    ids = torch.randint(0, 6, (2, 5), generator=torch.Generator().manual_seed(29))
    chunk_ids = torch.tensor([[0, 0, -1, 1, 2], [-1, 1, 1, 1, 0]])
    assert torch.autograd.gradcheck(lambda z: fn.chunk_log_probs(z, ids, chunk_ids, 3), (x,))


def test_chunk_log_probs_edge_cases():
    x = _logits(2, 4, 5, dtype=torch.float32, seed=30, grad=True)
    ids = torch.zeros(2, 4, dtype=torch.long)
    none = torch.full((2, 4), -1)
    out = fn.chunk_log_probs(x, ids, none, 3)
    assert out.shape == (2, 3) and out.abs().max() == 0
    out.sum().backward()
    assert x.grad.abs().max() == 0
    # a chunk that has no tokens stays 0; log-probs are <= 0
    out = fn.chunk_log_probs(x, ids, torch.tensor([[0, 0, 2, 2], [2, -1, -1, 0]]), 3)
    assert out[:, 1].abs().max() == 0 and (out <= 0).all()
    # one-token chunk of a uniform distribution: -log V
    flat = torch.zeros(1, 1, 5)
    lp = fn.chunk_log_probs(flat, torch.tensor([[3]]), torch.tensor([[0]]), 1)
    torch.testing.assert_close(lp, torch.tensor([[-math.log(5)]]))
    with pytest.raises(ValueError, match="chunk id 3 is out of range for num_chunks=3"):
        fn.chunk_log_probs(x, ids, torch.tensor([[0, 3, -1, -1], [-1, -1, -1, -1]]), 3)
    with pytest.raises(ValueError, match=r"gold ids .* \[0, 5\)"):
        fn.chunk_log_probs(x, torch.full((2, 4), 5), torch.zeros(2, 4, dtype=torch.long), 3)
    with pytest.raises(TypeError, match="chunk_ids must be an int64 tensor"):
        fn.chunk_log_probs(x, ids, torch.zeros(2, 4), 3)
    with pytest.raises(ValueError, match="ids must have shape"):
        fn.chunk_log_probs(x, ids[:, :3], none, 3)


# -- CALM -----------------------------------------------------------------------------
def _chunk_lps(b, c, seed, dtype=torch.float32, grad=False):
    g = torch.Generator().manual_seed(seed)
    lp = (-torch.rand(b, c, generator=g) * 6).to(dtype)  # log-probs in (-6, 0]
    return lp.requires_grad_(grad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("tau", [1.0, 2.0, 5.0])
def test_calm_matches_plain(dtype, reverse, tau):
    lp_s = _chunk_lps(3, 5, seed=31, dtype=dtype, grad=True)
    lp_t = _chunk_lps(3, 5, seed=32, dtype=dtype)
    mask = _mask(3, 5, seed=33, p=0.6)
    got, g_got = _value_and_grad(lambda x: fn.calm(x, lp_t, mask, temperature=tau, reverse=reverse), lp_s)
    want, g_want = _value_and_grad(lambda x: plain_calm(x, lp_t, mask, tau, reverse), lp_s)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_tidal_calm_matches_plain(dtype, reverse):
    lp_s = _chunk_lps(3, 5, seed=34, dtype=dtype, grad=True)
    lp_t = _chunk_lps(3, 5, seed=35, dtype=dtype)
    mask = _mask(3, 5, seed=36, p=0.6)
    lam = torch.tensor([0.1, 0.5, 0.9])
    w = torch.tensor([1.0, 0.3, 2.0])
    got, g_got = _value_and_grad(
        lambda x: fn.tidal_calm(x, lp_t, mask, lam, weight=w, temperature=2.0, reverse=reverse), lp_s
    )
    want, g_want = _value_and_grad(lambda x: plain_tidal_calm(x, lp_t, mask, lam, w, 2.0, reverse), lp_s)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-6)
    # lam = 1 is CALM with the teacher as target
    torch.testing.assert_close(fn.tidal_calm(lp_s, lp_t, mask, torch.ones(3)), fn.calm(lp_s, lp_t, mask))


def test_calm_identities():
    lp = _chunk_lps(3, 5, seed=37, grad=True)
    mask = _mask(3, 5, seed=38, p=0.6)
    # CALM of identical chunks is the Bernoulli entropy, its gradient is 0 (the minimum)
    loss = fn.calm(lp, lp.detach(), mask)
    loss.backward()
    assert lp.grad.abs().max() < 1e-5
    # the teacher side receives no gradient
    lp_t = _chunk_lps(3, 5, seed=39, grad=True)
    fn.calm(lp.detach().requires_grad_(), lp_t, mask, reverse=True).backward()
    assert lp_t.grad is None
    for f in (
        lambda x: fn.calm(x, lp.detach(), torch.zeros(3, 5, dtype=torch.bool)),
        lambda x: fn.calm(x, lp.detach(), torch.zeros(3, 5, dtype=torch.bool), reverse=True),
        lambda x: fn.tidal_calm(x, lp.detach(), torch.zeros(3, 5, dtype=torch.bool), torch.ones(3)),
    ):
        x = lp.detach().clone().requires_grad_()
        out = f(x)
        out.backward()
        assert out.item() == 0.0 and torch.isfinite(x.grad).all() and x.grad.abs().max() == 0


def plain_bernoulli_kl(lp_s, lp_t, mask, tau):
    """``KL(Bern(s) || Bern(q))`` per active chunk, mean over active chunks."""
    s = torch.exp(lp_s.float() / tau).clamp(1e-7, 1 - 1e-7)
    q = torch.exp(lp_t.detach().float() / tau).clamp(1e-7, 1 - 1e-7)
    loss = s * torch.log(s / q) + (1 - s) * torch.log((1 - s) / (1 - q))
    return loss[mask].sum() / max(1, int(mask.sum()))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tau", [1.0, 2.0, 5.0])
def test_reverse_calm_bernoulli_kl_matches_plain(dtype, tau):
    lp_s = _chunk_lps(3, 5, seed=41, dtype=dtype, grad=True)
    lp_t = _chunk_lps(3, 5, seed=42, dtype=dtype)
    mask = _mask(3, 5, seed=43, p=0.6)
    f = lambda x: fn.calm(x, lp_t, mask, temperature=tau, reverse=True, bernoulli_kl=True)  # noqa: E731
    got, g_got = _value_and_grad(f, lp_s)
    want, g_want = _value_and_grad(lambda x: plain_bernoulli_kl(x, lp_t, mask, tau), lp_s)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-6)
    # the closed form: (s / tau)(logit(s) - logit(q)) per active chunk, over their count
    s, q = torch.exp(lp_s.detach().float() / tau), torch.exp(lp_t.float() / tau)
    closed = (s / tau) * (torch.logit(s) - torch.logit(q)) * mask / mask.sum()
    torch.testing.assert_close(g_got, closed, **TOL[dtype]["grad"])  # the gradient is stored in lp_S's dtype
    # identical chunks: KL 0, gradient 0
    same, g_same = _value_and_grad(lambda x: fn.calm(x, x.detach(), mask, temperature=tau, reverse=True,
                                                     bernoulli_kl=True), lp_s)
    assert abs(same.item()) < 1e-6 and g_same.abs().max() < 1e-6


def test_bernoulli_kl_pulls_s_towards_q_where_reference_pushes_down():
    """Teacher below 1/2 on every chunk: the reference's Reverse CALM lowers ``s``
    everywhere (positive gradient in ``lp_S``); the Bernoulli KL raises ``s`` where
    ``s < q`` and lowers it where ``s > q``."""
    tau = 2.0
    q = torch.tensor([[0.05, 0.3, 0.45, 0.2, 0.1, 0.4]])
    s = torch.tensor([[0.01, 0.1, 0.2, 0.6, 0.3, 0.9]])
    lp_t, mask = tau * q.log(), torch.ones(1, 6, dtype=torch.bool)
    below = s < q
    for dtype in DTYPES:
        lp_s = (tau * s.log()).to(dtype).requires_grad_()
        _, g_kl = _value_and_grad(lambda x: fn.calm(x, lp_t, mask, temperature=tau, reverse=True, bernoulli_kl=True),
                                  lp_s)
        _, g_ref = _value_and_grad(lambda x: fn.calm(x, lp_t, mask, temperature=tau, reverse=True), lp_s)
        assert (g_kl[below] < 0).all() and (g_kl[~below] > 0).all()
        assert (g_ref > 0).all()  # q < 1/2: the reference lowers s whatever s is


def test_bernoulli_kl_needs_reverse():
    lp = _chunk_lps(2, 3, seed=44)
    with pytest.raises(ValueError, match="bernoulli_kl=True needs reverse=True"):
        fn.calm(lp, lp, torch.ones(2, 3, dtype=torch.bool), bernoulli_kl=True)
    with pytest.raises(ValueError, match="bernoulli_kl must be True or False, got 'yes'"):
        fn.calm(lp, lp, torch.ones(2, 3, dtype=torch.bool), reverse=True, bernoulli_kl="yes")


REVERSE_CALM_BOUND = math.log((1 - 1e-7) / 1e-7)  # 16.118..., |log((1-q)/q)| under the clamp


@pytest.mark.parametrize("tau", [1.0, 2.0, 5.0])
def test_reverse_calm_gradient_formula(tau):
    """d loss / d lp_S = (s / tau) log((1-q)/q) per chunk (here divided by the chunk count)."""
    lp_s = torch.tensor([[-0.3, -2.0, -7.0, -0.01], [-1.0, -4.0, -0.5, -3.0]], requires_grad=True)
    lp_t = torch.tensor([[-0.1, -3.0, -0.5, -9.0], [-tau * math.log(2), -1e-3, -20.0, -2.5]])
    mask = torch.ones(2, 4, dtype=torch.bool)
    fn.calm(lp_s, lp_t, mask, temperature=tau, reverse=True).backward()
    s = torch.exp(lp_s.detach() / tau)
    q = torch.exp(lp_t / tau).clamp(1e-7, 1 - 1e-7)
    expected = (s / tau) * torch.log((1 - q) / q) / mask.sum()
    torch.testing.assert_close(lp_s.grad, expected, rtol=1e-4, atol=1e-7)
    # an undecided teacher (q = 1/2) gives no gradient
    assert abs(lp_s.grad[1, 0].item()) < 1e-6


@pytest.mark.parametrize("tau", [0.5, 2.0, 5.0])
def test_reverse_calm_gradient_bounded_at_extremes(tau):
    vals = torch.tensor([0.0, -1e-9, -1e-3, -0.7, -5.0, -40.0, -1e3, -1e6])
    lp_s, lp_t = torch.meshgrid(vals, vals, indexing="ij")
    lp_s = lp_s.clone().requires_grad_(True)
    mask = torch.ones_like(lp_t, dtype=torch.bool)
    loss = fn.calm(lp_s, lp_t, mask, temperature=tau, reverse=True)
    loss.backward()
    per_chunk = lp_s.grad * mask.sum()
    assert torch.isfinite(loss) and torch.isfinite(per_chunk).all()
    assert per_chunk.abs().max() <= REVERSE_CALM_BOUND / tau * (1 + 1e-5)
    # the bound is reached (to float32 precision) when s ~ 1 and q is at the low clamp
    s = torch.exp(lp_s.detach() / tau).clamp(1e-7, 1 - 1e-7)
    q = torch.exp(lp_t / tau).clamp(1e-7, 1 - 1e-7)
    inside = (torch.exp(lp_s.detach() / tau) > 1e-7) & (torch.exp(lp_s.detach() / tau) < 1 - 1e-7)
    torch.testing.assert_close(
        per_chunk[inside], ((s / tau) * torch.log((1 - q) / q))[inside], rtol=1e-4, atol=1e-7
    )
    # a student that gives the chunk ~0 probability gets ~0 gradient (dual-end filtering)
    assert per_chunk[-2:].abs().max() < 1e-5


# -- argument validation ---------------------------------------------------------------
def test_validation_errors():
    s = torch.zeros(2, 3, 5)
    m = torch.ones(2, 3, dtype=torch.bool)
    lp = torch.zeros(2, 4)
    cm = torch.ones(2, 4, dtype=torch.bool)
    t = torch.rand(2)
    cases = [
        (lambda: fn.token_kl(s, s, m, temperature=0), ValueError, "temperature must be a number > 0, got 0"),
        (lambda: fn.token_kl(s, s, m, temperature=-1.0), ValueError, "temperature"),
        (lambda: fn.token_kl(s, s, m.long()), TypeError, "mask must be a bool tensor"),
        (lambda: fn.token_kl(s, s, m[:, :2]), ValueError, r"mask must have shape \[2, 3\]"),
        (lambda: fn.token_kl(s, s[:, :2], m), ValueError, "must agree on"),
        (lambda: fn.token_kl(s[0], s, m), ValueError, r"student_logits must have shape \[b, L, V\]"),
        (lambda: fn.token_kl(s, s, m, shared_vocab_size=6), ValueError, r"shared_vocab_size 6 must be in \[1, 5\]"),
        (lambda: fn.tidal_kl(s, s, m, torch.zeros(3)), ValueError, r"lam must have shape \[b\]=\[2\]"),
        (lambda: fn.calm(lp, lp[:, :3], cm), ValueError, "same shape"),
        (lambda: fn.calm(lp, lp, cm, temperature=float("nan")), ValueError, "temperature"),
        (lambda: fn.tidal_calm(lp, lp, cm.float(), t), TypeError, "chunk_mask must be a bool tensor"),
        (
            lambda: fn.token_divergence(s, s, t.long(), t.long(), t.long(), mode="jsd"),
            ValueError,
            "mode 'jsd' is not one of",
        ),
        (
            lambda: fn.token_divergence(s, s, torch.tensor([0]), torch.tensor([3]), torch.tensor([0])),
            ValueError,
            r"student_positions must lie in \[0, 3\), got range \[3, 3\]",
        ),
    ]
    for call, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            call()
