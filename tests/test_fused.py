"""The fused output layer (tide_plugin/logits.py, objectives/rows.py) against plain implementations of docs/method.md
on fully built logits ``hidden @ weight.T + bias``: value and gradient with respect to
the hidden states, the output weight and the bias, float32 and bfloat16, odd shapes,
many row / vocabulary chunks and the default ones."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tide_plugin.batch import DistillBatch, DistillInputs
from tide_plugin.objectives import functional as fn
from tide_plugin import logits as fused
from tide_plugin.logits import ProjectedLogits
from tide_plugin.objectives import functional as fused_token
from tide_plugin.registry import get_objective

TOL = {
    # value: float32 sums over rows in a different order; bf16: the logits are rounded to
    # bf16 by the projection on both paths, the fused path accumulates d hidden in float32.
    torch.float32: dict(value=dict(rtol=1e-5, atol=1e-5), grad=dict(rtol=1e-4, atol=1e-5)),
    torch.bfloat16: dict(value=dict(rtol=2e-2, atol=2e-2), grad=dict(rtol=5e-2, atol=2e-3)),
}
DTYPES = [torch.float32, torch.bfloat16]
TAU = 2.0


@pytest.fixture(params=[16, fn.ROW_CHUNK_ELEMENTS], ids=["tiny_chunks", "default_chunks"])
def chunks(request, monkeypatch):
    """Once with chunks of one or two rows / vocabulary columns, once with the default."""
    monkeypatch.setattr(fused, "ROW_CHUNK_ELEMENTS", request.param)
    return request.param


def _head(b, length, hidden, vocab, *, dtype, seed, bias=False, grad=True):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(b, length, hidden, generator=g) * 1.5).to(dtype).requires_grad_(grad)
    w = (torch.randn(vocab, hidden, generator=g) * 0.8).to(dtype).requires_grad_(grad)
    bb = (torch.randn(vocab, generator=g) * 0.5).to(dtype).requires_grad_(grad) if bias else None
    return h, w, bb


def _logits(h, w, bb):
    """The logits as a model's head builds them (in the weights' dtype)."""
    return F.linear(h, w, bb)


def _grads(loss, tensors):
    loss.backward()
    out = [None if t is None else t.grad.detach().float().clone() for t in tensors]
    for t in tensors:
        if t is not None:
            t.grad = None
    return out


def _compare(got, want, got_grads, want_grads, dtype):
    torch.testing.assert_close(got.detach().float(), want.detach().float(), **TOL[dtype]["value"])
    for g, w in zip(got_grads, want_grads):
        if w is not None:
            assert g is not None and g.abs().sum() > 0
            torch.testing.assert_close(g, w, **TOL[dtype]["grad"])


# -- plain implementations of docs/method.md on full logits --------------------------------------------
def plain_token(z_s, z_t, b_idx, s_pos, t_pos, mode, v, lam=None, weight=None):
    u_s = z_s[b_idx, s_pos][:, :v].float() / TAU
    u_t = z_t.detach()[b_idx, t_pos][:, :v].float() / TAU
    log_ps = u_s.log_softmax(-1)
    if mode == "forward":
        log_pt = u_t.log_softmax(-1)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)
    elif mode == "reverse":
        log_pt = u_t.log_softmax(-1)
        kl = (log_ps.exp() * (log_ps - log_pt)).sum(-1)
    else:
        lam_r = lam[b_idx][:, None]
        r = torch.softmax((1 - lam_r) * u_s + lam_r * u_t, -1).detach()
        kl = (r * (r.log() - log_ps)).sum(-1) * weight[b_idx]
    return kl.sum() / kl.shape[0] * TAU**2


def plain_gold_lp(z, ids):
    return z.float().log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)  # [b, L]


# -- CE rows and gold log-probs -------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
def test_nll_rows_match_cross_entropy(dtype, bias, chunks):
    b, length, hid, vocab = 3, 7, 5, 37
    h, w, bb = _head(b, length, hid, vocab, dtype=dtype, seed=1, bias=bias)
    ids = torch.randint(0, vocab, (b, length), generator=torch.Generator().manual_seed(2))
    rows = torch.rand(b, length, generator=torch.Generator().manual_seed(3)) < 0.6
    params = [h, w, bb]
    got = fused.nll_rows(ProjectedLogits(h, w, bb), ids, rows).sum()
    g_got = _grads(got, params)
    want = F.cross_entropy(_logits(h, w, bb)[rows].float(), ids[rows], reduction="sum")
    g_want = _grads(want, params)
    _compare(got, want, g_got, g_want, dtype)
    assert (g_got[0][~rows] == 0).all()  # only the rows that count receive a gradient


def test_gold_log_probs_on_overlapping_rows_stay_exact():
    """CE rows and chunk rows overlap: the gradient of a loss that reads a row twice is
    the sum of both uses, and rows of other ids are not mixed up."""
    b, length, hid, vocab = 2, 9, 4, 23
    h, w, _ = _head(b, length, hid, vocab, dtype=torch.float32, seed=4)
    ids = torch.randint(0, vocab, (b, length), generator=torch.Generator().manual_seed(5))
    first = torch.zeros(b, length, dtype=torch.bool)
    first[:, :6] = True
    second = torch.zeros(b, length, dtype=torch.bool)
    second[:, 3:] = True
    logits = ProjectedLogits(h, w)
    lp1 = fused.gold_log_probs(logits, ids, first)
    lp2 = fused.gold_log_probs(logits, ids, second)
    assert (lp1[~first] == 0).all() and (lp2[~second] == 0).all()
    got = (lp1[first] * 2.0).sum() + (lp2[second] ** 2).sum()
    g_got = _grads(got, [h, w])
    lp = plain_gold_lp(_logits(h, w, None), ids)
    want = (lp[first] * 2.0).sum() + (lp[second] ** 2).sum()
    g_want = _grads(want, [h, w])
    _compare(got, want, g_got, g_want, torch.float32)
    other = (ids + 1) % vocab
    lp3 = fused.gold_log_probs(logits, other, first)
    torch.testing.assert_close(lp3[first], plain_gold_lp(_logits(h, w, None), other)[first].detach())


def test_chunk_log_probs_match_plain(chunks):
    b, length, hid, vocab, n_chunks = 2, 11, 6, 29, 4
    h, w, bb = _head(b, length, hid, vocab, dtype=torch.float32, seed=6, bias=True)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, vocab, (b, length), generator=g)
    chunk_ids = torch.randint(-1, n_chunks, (b, length), generator=g)
    got = fn.chunk_log_probs(ProjectedLogits(h, w, bb), ids, chunk_ids, n_chunks)
    want = fn.chunk_log_probs(_logits(h, w, bb), ids, chunk_ids, n_chunks)
    probe = torch.randn(b, n_chunks, generator=g)
    g_got = _grads((got * probe).sum(), [h, w, bb])
    g_want = _grads((want * probe).sum(), [h, w, bb])
    _compare(got, want, g_got, g_want, torch.float32)


# -- token divergences ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["forward", "reverse", "tidal"])
@pytest.mark.parametrize("shared", [None, 17])
def test_token_divergence_matches_plain(dtype, mode, shared, chunks):
    b, length, l_t, vs, vt = 3, 7, 10, 31, 26
    h_s, w_s, b_s = _head(b, length, 5, vs, dtype=dtype, seed=8, bias=True)
    h_t, w_t, _ = _head(b, l_t, 3, vt, dtype=dtype, seed=9, grad=False)
    g = torch.Generator().manual_seed(10)
    n = 9  # template pairs: a student position may be paired twice
    b_idx = torch.randint(0, b, (n,), generator=g)
    s_pos = torch.randint(0, length, (n,), generator=g)
    s_pos[1], b_idx[1] = s_pos[0], b_idx[0]
    t_pos = torch.randint(0, l_t, (n,), generator=g)
    lam = torch.rand(b, generator=g)
    weight = torch.rand(b, generator=g) + 0.5
    extra = dict(lam=lam, weight=weight) if mode == "tidal" else {}
    v = shared or min(vs, vt)
    got = fused_token.token_divergence(
        ProjectedLogits(h_s, w_s, b_s), ProjectedLogits(h_t, w_t), b_idx, s_pos, t_pos, mode=mode,
        temperature=TAU, shared_vocab_size=shared, **extra,
    )
    assert got.dtype == torch.float32 and got.dim() == 0
    g_got = _grads(got, [h_s, w_s, b_s])
    z_s, z_t = _logits(h_s, w_s, b_s), _logits(h_t, w_t, None)
    want = plain_token(z_s, z_t, b_idx, s_pos, t_pos, mode, v, lam, weight)
    g_want = _grads(want, [h_s, w_s, b_s])
    _compare(got, want, g_got, g_want, dtype)
    assert (g_got[1][v:] == 0).all() and (g_got[2][v:] == 0).all()  # beyond the shared slice
    # today's path (full logits into the reference engine) gives the same value
    today = fn.token_divergence(z_s, z_t, b_idx, s_pos, t_pos, mode=mode, temperature=TAU,
                                shared_vocab_size=shared, **extra)
    torch.testing.assert_close(got.detach(), today.detach(), **TOL[dtype]["value"])


@pytest.mark.parametrize("mode", ["forward", "reverse", "tidal"])
def test_gradcheck_float64(mode):
    h_s, w_s, b_s = _head(2, 3, 3, 7, dtype=torch.float64, seed=11, bias=True)
    h_t, w_t, _ = _head(2, 4, 2, 6, dtype=torch.float64, seed=12, grad=False)
    b_idx, s_pos, t_pos = torch.tensor([0, 1, 1, 0]), torch.tensor([2, 0, 1, 2]), torch.tensor([3, 0, 2, 1])
    # R is a stop-gradient target: finite differences see it move unless lam = 1 (R = P_T);
    # test_token_divergence_matches_plain covers other lam against autograd through stopgrad.
    extra = dict(lam=torch.tensor([1.0, 1.0]), weight=torch.tensor([1.0, 0.5])) if mode == "tidal" else {}

    def token(hs, ws, bs):
        return fused_token.token_divergence(ProjectedLogits(hs, ws, bs), ProjectedLogits(h_t, w_t), b_idx, s_pos, t_pos,
                                      mode=mode, temperature=TAU, **extra)

    assert torch.autograd.gradcheck(token, (h_s, w_s, b_s))
    ids = torch.tensor([[1, 6, 0], [2, 2, 5]])
    rows = torch.tensor([[True, False, True], [True, True, True]])
    assert torch.autograd.gradcheck(lambda hs, ws, bs: fused.nll_rows(ProjectedLogits(hs, ws, bs), ids, rows),
                                    (h_s, w_s, b_s))


def test_empty_rows_give_zero_with_zero_gradient():
    h_s, w_s, _ = _head(2, 3, 3, 7, dtype=torch.float32, seed=13)
    h_t, w_t, _ = _head(2, 3, 3, 7, dtype=torch.float32, seed=14, grad=False)
    none = torch.zeros(0, dtype=torch.long)
    loss = fused_token.token_divergence(ProjectedLogits(h_s, w_s), ProjectedLogits(h_t, w_t), none, none, none)
    loss = loss + fused.nll_rows(ProjectedLogits(h_s, w_s), torch.zeros(2, 3, dtype=torch.long),
                                 torch.zeros(2, 3, dtype=torch.bool)).sum()
    loss.backward()
    assert float(loss.detach()) == 0.0 and (h_s.grad == 0).all() and (w_s.grad == 0).all()


def test_bad_input_is_named():
    h, w, _ = _head(1, 2, 3, 5, dtype=torch.float32, seed=15)
    with pytest.raises(ValueError, match=r"weight must be \[V, H\] with H = 3"):
        ProjectedLogits(h, w[:, :2])
    with pytest.raises(ValueError, match=r"gold ids must lie in \[0, 5\)"):
        fused.gold_log_probs(ProjectedLogits(h, w), torch.full((1, 2), 7), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="both be tensors or both ProjectedLogits"):
        fused_token.token_divergence(ProjectedLogits(h, w), torch.zeros(1, 2, 5), torch.tensor([0]),
                               torch.tensor([0]), torch.tensor([0]))


# -- the registered objectives on projected logits (the fused training path) ----------------
def _cross_batch(b, length, l_t, vs, vt, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, vs, (b, length), generator=g)
    y0 = torch.randint(0, vt, (b, l_t), generator=g)
    n_chunks = 4
    s_chunks = torch.randint(-1, n_chunks, (b, length), generator=g)
    t_chunks = torch.randint(-1, n_chunks, (b, l_t), generator=g)
    return DistillBatch(
        pipeline="cross", input_ids=x0, labels=x0.clone(), attention_mask=torch.ones(b, length, dtype=torch.bool),
        teacher_input_ids=y0, teacher_attention_mask=torch.ones(b, l_t, dtype=torch.bool),
        student_chunk_ids=s_chunks, teacher_chunk_ids=t_chunks, num_chunks=torch.full((b,), n_chunks),
        t=torch.rand(b, generator=g), masked=torch.rand(b, length, generator=g) < 0.5,
        chunk_active=torch.rand(b, n_chunks, generator=g) < 0.7,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "name,pipeline", [("calm", "cross"), ("reverse_calm", "cross"), ("reverse_calm:bernoulli_kl", "cross"),
                      ("tidal_calm+calm", "cross"), ("kl", "same"), ("reverse_kl", "same"), ("tidal", "same")],
)
def test_objectives_on_projected_logits_match_full_logits(dtype, name, pipeline, chunks):
    b, length, vs, vt = 2, 9, 33, 27
    l_t = length if pipeline == "same" else 13
    batch = _cross_batch(b, length, l_t, vs, vt, seed=16)
    if pipeline == "same":
        batch.pipeline = "same"
    h_s, w_s, _ = _head(b, length, 6, vs, dtype=dtype, seed=17)
    h_t, w_t, _ = _head(b, l_t, 4, vt, dtype=dtype, seed=18, grad=False)
    name, _, option = name.partition(":")
    objective = get_objective(name, **({option: True} if option else {}))
    assert objective.supports_projected_logits

    def run(student, teacher):
        parts = objective(DistillInputs(batch=batch, student_logits=student, teacher_logits=teacher, progress=0.4))
        return sum(parts.values())

    got = run(ProjectedLogits(h_s, w_s), ProjectedLogits(h_t, w_t))
    g_got = _grads(got, [h_s, w_s])
    want = run(_logits(h_s, w_s, None), _logits(h_t, w_t, None))
    g_want = _grads(want, [h_s, w_s])
    _compare(got, want, g_got, g_want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["forward", "reverse", "tidal"])
def test_token_divergence_and_ce_on_the_same_rows(dtype, mode, chunks):
    """A token objective and CE on the same masked rows of projected logits: CE +
    divergence match the plain sum in value and gradient."""
    b, length, vs, vt, shared = 2, 9, 37, 29, 23
    h_s, w_s, b_s = _head(b, length, 5, vs, dtype=dtype, seed=19, bias=True)
    h_t, w_t, _ = _head(b, length, 4, vt, dtype=dtype, seed=20, grad=False)
    g = torch.Generator().manual_seed(21)
    ids = torch.randint(0, vs, (b, length), generator=g)
    masked = torch.rand(b, length, generator=g) < 0.6
    lam, weight = torch.rand(b, generator=g), torch.rand(b, generator=g) + 0.5
    extra = dict(lam=lam, weight=weight) if mode == "tidal" else {}
    b_idx, pos = masked.nonzero(as_tuple=True)
    s = ProjectedLogits(h_s, w_s, b_s)
    div = fused_token.token_divergence(s, ProjectedLogits(h_t, w_t), b_idx, pos, pos, mode=mode, temperature=TAU,
                                       shared_vocab_size=shared, **extra)
    ce = fused.nll_rows(s, ids, masked).mean()
    got = div + 0.7 * ce
    g_got = _grads(got, [h_s, w_s, b_s])
    z_s = _logits(h_s, w_s, b_s)
    want = plain_token(z_s, _logits(h_t, w_t, None), b_idx, pos, pos, mode, shared, lam, weight)
    want = want + 0.7 * F.cross_entropy(z_s[masked].float(), ids[masked])
    g_want = _grads(want, [h_s, w_s, b_s])
    _compare(got, want, g_got, g_want, dtype)


# -- a divergence of one's own: a pure function of row log-probs ----------------------------
def hellinger_rows(log_ps, log_pt):
    """Squared Hellinger distance per row, written as plain torch code (no backward)."""
    return 1.0 - torch.exp(0.5 * (log_ps + log_pt)).sum(-1)


def plain_custom(z_s, z_t, b_idx, s_pos, t_pos, v):
    log_ps = (z_s[b_idx, s_pos][:, :v].float() / TAU).log_softmax(-1)
    log_pt = (z_t.detach()[b_idx, t_pos][:, :v].float() / TAU).log_softmax(-1)
    return hellinger_rows(log_ps, log_pt).mean() * TAU**2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", ["plain", "projected"])
@pytest.mark.parametrize("shared", [None, 17])
def test_a_custom_divergence_matches_its_plain_autograd(dtype, path, shared, chunks):
    """A third party's divergence, given as ``mode=fn``, runs on the row engine on plain and
    projected logits: value and gradient equal plain autograd through the same function
    on full logits (repeated rows included)."""
    b, length, l_t, vs, vt = 3, 7, 10, 31, 26
    h_s, w_s, b_s = _head(b, length, 5, vs, dtype=dtype, seed=30, bias=True)
    h_t, w_t, _ = _head(b, l_t, 3, vt, dtype=dtype, seed=31, grad=False)
    g = torch.Generator().manual_seed(32)
    n = 9
    b_idx, s_pos, t_pos = (torch.randint(0, b, (n,), generator=g), torch.randint(0, length, (n,), generator=g),
                           torch.randint(0, l_t, (n,), generator=g))
    s_pos[1], b_idx[1] = s_pos[0], b_idx[0]
    v = shared or min(vs, vt)
    if path == "projected":
        student, teacher, params = ProjectedLogits(h_s, w_s, b_s), ProjectedLogits(h_t, w_t), [h_s, w_s, b_s]
    else:
        student = _logits(h_s, w_s, b_s).detach().requires_grad_()
        teacher, params = _logits(h_t, w_t, None), [student]
    got = fn.token_divergence(student, teacher, b_idx, s_pos, t_pos, mode=hellinger_rows, temperature=TAU,
                              shared_vocab_size=shared)
    assert got.dtype == torch.float32 and got.dim() == 0
    g_got = _grads(got, params)
    if path == "projected":
        want = plain_custom(_logits(h_s, w_s, b_s), _logits(h_t, w_t, None), b_idx, s_pos, t_pos, v)
    else:
        want = plain_custom(student, teacher, b_idx, s_pos, t_pos, v)
    g_want = _grads(want, params)
    _compare(got, want, g_got, g_want, dtype)
    # sum: the same rows without the 1/N
    total = fn.token_divergence(student, teacher, b_idx, s_pos, t_pos, mode=hellinger_rows, temperature=TAU,
                                shared_vocab_size=shared, reduction="sum")
    torch.testing.assert_close(total.detach(), got.detach() * n, **TOL[dtype]["value"])


def test_custom_divergence_gradcheck_float64():
    h_s, w_s, b_s = _head(2, 3, 3, 7, dtype=torch.float64, seed=33, bias=True)
    h_t, w_t, _ = _head(2, 4, 2, 6, dtype=torch.float64, seed=34, grad=False)
    b_idx, s_pos, t_pos = torch.tensor([0, 1, 1, 0]), torch.tensor([2, 0, 1, 2]), torch.tensor([3, 0, 2, 1])

    def loss(hs, ws, bs):
        return fn.token_divergence(ProjectedLogits(hs, ws, bs), ProjectedLogits(h_t, w_t), b_idx, s_pos, t_pos,
                                   mode=hellinger_rows, temperature=TAU)

    assert torch.autograd.gradcheck(loss, (h_s, w_s, b_s))
    z_s = _logits(h_s, w_s, b_s).detach().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z: fn.token_divergence(z, _logits(h_t, w_t, None), b_idx, s_pos, t_pos, mode=hellinger_rows,
                                      temperature=TAU), (z_s,))


def test_the_builtin_divergences_are_the_pure_functions():
    """``mode="forward"`` is ``mode=forward_kl``: the built-ins are pure functions too."""
    h_s, w_s, _ = _head(2, 5, 4, 13, dtype=torch.float32, seed=35)
    h_t, w_t, _ = _head(2, 5, 4, 13, dtype=torch.float32, seed=36, grad=False)
    rows = torch.tensor([0, 1, 1]), torch.tensor([1, 0, 4]), torch.tensor([1, 0, 4])
    s, t = ProjectedLogits(h_s, w_s), ProjectedLogits(h_t, w_t)
    for name, function in fn.DIVERGENCES.items():
        extra = dict(lam=torch.tensor([0.3, 0.6]), weight=torch.tensor([1.0, 0.5])) if name == "tidal" else {}
        by_name = fn.token_divergence(s, t, *rows, mode=name, **extra)
        by_function = fn.token_divergence(s, t, *rows, mode=function, **extra)
        torch.testing.assert_close(by_name, by_function)
    with pytest.raises(ValueError, match="reduction 'avg' is not one of"):
        fn.token_divergence(s, t, *rows, reduction="avg")
