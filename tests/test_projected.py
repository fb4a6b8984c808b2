"""The full-distribution cross-tokenizer objectives (``projected_kl``, ``xtoken_hybrid``)
against plain implementations on dense logits and a dense ``W`` (autograd), float32 and
bfloat16, plain logits and the fused output layer; identities, composition, refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tide_plugin
from tide_plugin.alignment.projection import VocabProjection
from tide_plugin.batch import DistillBatch, DistillInputs, PipelineInfo
from tide_plugin.objectives import functional as fn
from tide_plugin.objectives.base import PipelineMismatchError
from tide_plugin import logits as logits_rows
from tide_plugin.logits import ProjectedLogits
from tide_plugin.objectives.rows import chunk_first_positions
from tide_plugin.objectives.projected import one_to_one_pairs
from tide_plugin.training.normalise import local_denominators, normalise, part_units

B, L, LT, H, VS, VT = 3, 8, 10, 6, 11, 13
TOL = {
    torch.float32: dict(value=dict(rtol=1e-5, atol=1e-5), grad=dict(rtol=1e-4, atol=1e-5)),
    # bf16: both paths round the logits to bf16; d weight is a bf16 product on both
    torch.bfloat16: dict(value=dict(rtol=2e-2, atol=2e-2), grad=dict(rtol=5e-2, atol=3e-3)),
}
DTYPES = [torch.float32, torch.bfloat16]
STUDENT_CHUNKS = [[-1, -1, 0, 0, 1, 2, 2, 3], [-1, -1, 0, 1, 1, 2, 3, -1], [-1, -1, 0, 1, -1, -1, -1, -1]]
TEACHER_CHUNKS = [[-1, 0, 1, 1, 1, 2, 3, 3, -1, -1], [-1, 0, 0, 1, 2, 2, 3, 3, 3, -1], [-1, -1, 0, 0, 1, -1, -1, -1, -1, -1]]
ACTIVE = [[1, 0, 1, 1], [1, 1, 0, 1], [0, 1, 0, 0]]


def per_unit(objective, inputs):
    """The parts as the trainer divides them outside training: an objective returns sums
    over its unit, each divided by the batch's own count of that unit (the documented means)."""
    units = part_units(objective)
    return normalise(objective(inputs), units, local_denominators(inputs.batch, sorted(set(units.values()))))


@pytest.fixture(params=[16, fn.ROW_CHUNK_ELEMENTS], ids=["tiny_chunks", "default_chunks"])
def chunks(request, monkeypatch):
    """Once with row chunks of one or two rows, once with the default."""
    monkeypatch.setattr(logits_rows, "ROW_CHUNK_ELEMENTS", request.param)
    return request.param


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def sparse_w(seed=0, vt=VT, vs=VS, empty_rows=(3,)):
    """A random sparse W: each teacher row 1-3 student tokens; some rows empty; the
    last student column never mapped (so the reverse's support is not everything)."""
    g = _gen(seed)
    w = torch.zeros(vt, vs)
    for u in range(vt):
        if u in empty_rows:
            continue
        cols = torch.randperm(vs - 1, generator=g)[: int(torch.randint(1, 4, (1,), generator=g))]
        w[u, cols] = torch.rand(len(cols), generator=g) + 0.1
    return VocabProjection.from_dense(w)


def batch_for(active=None, same_chunks=False):
    g = _gen(0)
    s_chunks = torch.tensor(STUDENT_CHUNKS)
    t_chunks = s_chunks.clone() if same_chunks else torch.tensor(TEACHER_CHUNKS)
    ids = torch.randint(0, VS, (B, L), generator=g)
    return DistillBatch(
        pipeline="cross", input_ids=ids, labels=ids.clone(), attention_mask=torch.ones(B, L, dtype=torch.bool),
        teacher_input_ids=torch.randint(0, VT, (B, t_chunks.shape[1]), generator=g),
        student_chunk_ids=s_chunks, teacher_chunk_ids=t_chunks, num_chunks=torch.tensor([4, 4, 2]),
        chunk_active=torch.tensor(ACTIVE if active is None else active, dtype=torch.bool),
        masked=torch.ones(B, L, dtype=torch.bool), t=torch.tensor([0.3, 0.6, 0.9]),
    )


def heads(dtype, seed=1, lt=LT, vt=VT, vs=VS):
    g = _gen(seed)
    hs = (torch.randn(B, L, H, generator=g) * 1.5).to(dtype).requires_grad_(True)
    ws = (torch.randn(vs, H, generator=g) * 0.8).to(dtype).requires_grad_(True)
    ht = (torch.randn(B, lt, H, generator=g) * 1.5).to(dtype)
    wt = (torch.randn(vt, H, generator=g) * 0.8).to(dtype)
    return hs, ws, ht, wt


def inputs_for(hs, ws, ht, wt, batch, proj, fused):
    if fused:
        return DistillInputs(batch, ProjectedLogits(hs, ws), ProjectedLogits(ht, wt), projection=proj)
    return DistillInputs(batch, F.linear(hs, ws), F.linear(ht, wt), projection=proj)


def first_rows(batch):
    rows = []
    for b in range(B):
        for c in range(int(batch.num_chunks.max())):
            if batch.chunk_active[b, c]:
                s = (batch.student_chunk_ids[b] == c).nonzero()
                t = (batch.teacher_chunk_ids[b] == c).nonzero()
                if len(s) and len(t):
                    rows.append((b, int(s.min()), int(t.min())))
    return rows


# -- plain implementations: dense logits, dense W, autograd ----------------------------------
def plain_projected(z_s, z_t, batch, w, tau, reverse):
    total, masses = 0.0, []
    for b, sp, tp in first_rows(batch):
        raw = torch.softmax(z_t[b, tp].detach().float() / tau, -1) @ w
        masses.append(raw.sum())
        if raw.sum() <= 1e-6:
            continue
        q = raw / raw.sum()
        u = z_s[b, sp].float() / tau
        if not reverse:
            ls = torch.log_softmax(u, -1)
            kl = sum(q[v] * (q[v].log() - ls[v]) for v in range(len(q)) if q[v] > 0)
        else:
            sup = w.sum(0) > 0
            ls = torch.log_softmax(u[sup], -1)
            kl = (ls.exp() * (ls - q[sup].log())).sum()
        total = total + kl
    n = int(batch.chunk_active.sum())
    return total / max(1, n) * tau**2, torch.stack(masses)


def plain_hybrid(z_s, z_t, batch, pairs, tau, reverse, topk=8192):
    t_ids, s_ids = pairs
    vs, vt = z_s.shape[-1], z_t.shape[-1]
    s_unm = [v for v in range(vs) if v not in set(s_ids.tolist())]
    t_unm = [u for u in range(vt) if u not in set(t_ids.tolist())]
    total = 0.0
    for b, sp, tp in first_rows(batch):
        ls = torch.log_softmax(z_s[b, sp].float() / tau, -1)
        lt = torch.log_softmax(z_t[b, tp].detach().float() / tau, -1)
        for u, v in zip(t_ids.tolist(), s_ids.tolist()):
            total = total + (ls[v].exp() * (ls[v] - lt[u]) if reverse else lt[u].exp() * (lt[u] - ls[v]))
        k = min(len(s_unm), len(t_unm), topk)
        ps = ls.exp()[s_unm].sort(descending=True).values[:k]
        pt = lt.exp()[t_unm].sort(descending=True).values[:k]
        total = total + (ps - pt).abs().sum()
    return total / max(1, int(batch.chunk_active.sum())) * tau**2


def grads(loss, tensors):
    out = torch.autograd.grad(loss, tensors)
    return [g.float() for g in out]


def check(got, want, tensors, dtype):
    torch.testing.assert_close(got.detach().float(), want.detach().float(), **TOL[dtype]["value"])
    for g, r in zip(grads(got, tensors), grads(want, tensors)):
        assert r.abs().sum() > 0
        torch.testing.assert_close(g, r, **TOL[dtype]["grad"])


# -- values and gradients ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_projected_kl_matches_plain(dtype, fused, reverse, chunks):
    hs, ws, ht, wt = heads(dtype)
    proj, batch = sparse_w(), batch_for()
    obj = tide_plugin.get_objective("projected_kl", temperature=2.0, reverse=reverse)
    inputs = inputs_for(hs, ws, ht, wt, batch, proj, fused)
    got = per_unit(obj, inputs)["projected_kl"]
    want, masses = plain_projected(F.linear(hs, ws), F.linear(ht, wt), batch, proj.dense(), 2.0, reverse)
    assert got.dtype == torch.float32
    check(got, want, [hs, ws], dtype)
    m = obj.metrics(inputs)
    torch.testing.assert_close(m["mass_kept/projected_kl"], masses.float().mean(), **TOL[dtype]["value"])
    assert float(m["excluded/projected_kl"]) == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_xtoken_hybrid_matches_plain(dtype, fused, reverse, chunks):
    hs, ws, ht, wt = heads(dtype, seed=2)
    proj, batch = sparse_w(seed=1), batch_for()
    pairs = one_to_one_pairs(proj, threshold=0.6)
    assert 0 < pairs[0].numel() < VT  # both terms are exercised
    topk = 5  # fewer than the unmatched tokens: the top-k cut is exercised
    obj = tide_plugin.get_objective("xtoken_hybrid", temperature=2.0, reverse=reverse, uncommon_topk=topk)
    got = per_unit(obj, inputs_for(hs, ws, ht, wt, batch, proj, fused))["xtoken_hybrid"]
    want = plain_hybrid(F.linear(hs, ws), F.linear(ht, wt), batch, pairs, 2.0, reverse, topk)
    check(got, want, [hs, ws], dtype)


def test_fused_path_never_builds_full_logits(monkeypatch):
    def refuse(self):
        raise AssertionError("built [b, L, V] logits")

    monkeypatch.setattr(ProjectedLogits, "materialize", refuse)
    hs, ws, ht, wt = heads(torch.float32)
    inputs = inputs_for(hs, ws, ht, wt, batch_for(), sparse_w(), True)
    loss = tide_plugin.get_objective("projected_kl+xtoken_hybrid")(inputs)
    sum(loss.values()).backward()
    assert hs.grad is not None and ws.grad.abs().sum() > 0


def test_rows_without_mapped_mass_are_excluded_and_counted():
    """A teacher row whose mass sits on a token W does not map is left out (counted),
    and still counts in the denominator (the unit is active chunks); so does an active
    chunk without a token on one side (example 2 has no chunk 2)."""
    hs, ws, ht, wt = heads(torch.float32)
    proj, batch = sparse_w(empty_rows=(3,)), batch_for(active=[[1, 0, 1, 1], [1, 1, 0, 1], [0, 1, 1, 0]])
    z_t = F.linear(ht, wt).detach()
    b, _, tp = first_rows(batch)[1]
    z_t[b, tp, 3] = 200.0  # teacher sure of token 3, which W drops
    inputs = DistillInputs(batch, F.linear(hs, ws), z_t, projection=proj)
    obj = tide_plugin.get_objective("projected_kl")
    got = per_unit(obj, inputs)["projected_kl"]
    want, masses = plain_projected(F.linear(hs, ws), z_t, batch, proj.dense(), 1.0, False)
    torch.testing.assert_close(got, want)
    assert float(masses.min()) < 1e-6 and float(obj.metrics(inputs)["excluded/projected_kl"]) == 2


# -- identities -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["projected_kl", "projected_kl:reverse", "xtoken_hybrid", "xtoken_hybrid:reverse"])
@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_identical_distributions_under_identity_w_give_zero(name, fused):
    name, _, rev = name.partition(":")
    hs, ws, _, _ = heads(torch.float32, vt=VS)
    batch = batch_for(same_chunks=True)
    inputs = inputs_for(hs, ws, hs.detach().clone(), ws.detach().clone(), batch, VocabProjection.from_dense(torch.eye(VS)), fused)
    loss = tide_plugin.get_objective(name, reverse=bool(rev))(inputs)[name]
    g_h, g_w = torch.autograd.grad(loss, [hs, ws])
    assert abs(float(loss.detach())) < 1e-6
    assert float(g_h.abs().max()) < 1e-6 and float(g_w.abs().max()) < 1e-6


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_identical_tokenizers_equal_kl_at_the_first_positions(reverse, fused):
    """Identity W, same chunks on both sides: projected_kl is kl (functional.token_kl)
    over the chunks' first positions, value and gradient."""
    hs, ws, ht, wt = heads(torch.float32, lt=L, vt=VS)
    batch = batch_for(same_chunks=True)
    inputs = inputs_for(hs, ws, ht, wt, batch, VocabProjection.from_dense(torch.eye(VS)), fused)
    got = per_unit(tide_plugin.get_objective("projected_kl", temperature=2.0, reverse=reverse), inputs)["projected_kl"]
    mask = torch.zeros(B, L, dtype=torch.bool)
    for b, sp, _ in first_rows(batch):
        mask[b, sp] = True
    want = fn.token_kl(F.linear(hs, ws), F.linear(ht, wt), mask, temperature=2.0, reverse=reverse)
    check(got, want, [hs, ws], torch.float32)


@pytest.mark.parametrize("name", ["projected_kl", "xtoken_hybrid"])
@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_no_active_chunk_gives_zero_with_a_gradient(name, fused):
    hs, ws, ht, wt = heads(torch.float32)
    inputs = inputs_for(hs, ws, ht, wt, batch_for(active=[[0] * 4] * 3), sparse_w(), fused)
    obj = tide_plugin.get_objective(name)
    loss = obj(inputs)[name]
    assert float(loss.detach()) == 0.0
    g_h, g_w = torch.autograd.grad(loss, [hs, ws])
    assert float(g_h.abs().sum()) == 0.0 and float(g_w.abs().sum()) == 0.0
    assert float(obj.metrics(inputs)[f"excluded/{name}"]) == 0


# -- composition, refusals, W's pairs ------------------------------------------------------------
@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_composition_with_reverse_calm_is_the_sum_of_its_parts(fused):
    hs, ws, ht, wt = heads(torch.float32)
    proj, batch = sparse_w(), batch_for()
    both = tide_plugin.get_objective("projected_kl+reverse_calm")(inputs_for(hs, ws, ht, wt, batch, proj, fused))
    alone = {}
    for name in ("projected_kl", "reverse_calm"):
        alone.update(tide_plugin.get_objective(name)(inputs_for(hs, ws, ht, wt, batch, proj, fused)))
    assert set(both) == {"projected_kl", "reverse_calm"}
    for k in both:
        torch.testing.assert_close(both[k], alone[k])
    check(sum(both.values()), sum(alone.values()), [hs, ws], torch.float32)


def test_a_run_without_projection_is_refused():
    for name in ("projected_kl", "xtoken_hybrid", "projected_kl+reverse_calm"):
        obj = tide_plugin.get_objective(name)
        with pytest.raises(PipelineMismatchError, match=r"needs a vocabulary projection W"):
            obj.check_pipeline(PipelineInfo("cross"))
        obj.check_pipeline(PipelineInfo("cross", has_projection=True))
        with pytest.raises(PipelineMismatchError, match="chunk alignment"):
            obj.check_pipeline(PipelineInfo("same", has_projection=True))
    assert tide_plugin.objective_requirements("projected_kl") == {"chunks", "projection"}
    hs, ws, ht, wt = heads(torch.float32)
    with pytest.raises(ValueError, match=r"'projected_kl' needs inputs.projection"):
        tide_plugin.get_objective("projected_kl")(inputs_for(hs, ws, ht, wt, batch_for(), None, False))
    too_big = VocabProjection.from_dense(torch.eye(VT + 1))
    with pytest.raises(ValueError, match=r"W is \[V_T, V_S\] = \[14, 14\]"):
        tide_plugin.get_objective("xtoken_hybrid")(inputs_for(hs, ws, ht, wt, batch_for(), too_big, False))


@pytest.mark.parametrize(
    "config, message",
    [
        ({"temperature": 0}, "temperature must be"),
        ({"reverse": 1}, "reverse must be True or False"),
        ({"match_threshold": 0.0}, r"match_threshold must be a number in \(0, 1\]"),
        ({"uncommon_topk": 0}, "uncommon_topk must be an int >= 1"),
    ],
)
def test_config_validation(config, message):
    name = "xtoken_hybrid" if set(config) & {"match_threshold", "uncommon_topk"} else "projected_kl"
    with pytest.raises(ValueError, match=message):
        tide_plugin.get_objective(name, **config)


def test_one_to_one_pairs_resolve_collisions():
    w = torch.zeros(6, 4)  # rows are renormalised by from_dense
    w[0, 1] = 1.0  # 0 -> 1 (exact)
    w[1, 1] = 1.0  # collides with 0 on student 1 at the same weight: the lower teacher id wins
    w[2, 2], w[2, 3] = 0.7, 0.3  # 2 -> 2 at 0.7: a relaxed match only
    w[3, 2], w[3, 0] = 0.5, 0.5  # a tie at 0.5: top student 0, below 0.6
    w[4, 0], w[4, 3] = 0.4, 0.6  # 4 -> 3 at 0.6
    # row 5 empty
    proj = VocabProjection.from_dense(w)
    t, s = one_to_one_pairs(proj, threshold=0.6)
    assert t.tolist() == [0, 2, 4] and s.tolist() == [1, 2, 3]
    t, s = one_to_one_pairs(proj, threshold=1.0)
    assert t.tolist() == [0] and s.tolist() == [1]
    t, s = one_to_one_pairs(proj, threshold=0.5)  # 3 -> 0 now counts
    assert t.tolist() == [0, 2, 3, 4] and s.tolist() == [1, 2, 0, 3]
    w[5, 2] = 1.0  # outweighs 2 (0.7) on student 2
    t, s = one_to_one_pairs(VocabProjection.from_dense(w), threshold=0.6)
    assert t.tolist() == [0, 4, 5] and s.tolist() == [1, 3, 2]
    with pytest.raises(ValueError, match=r"threshold must lie in \(0, 1\]"):
        one_to_one_pairs(proj, threshold=0)


def test_chunk_first_positions():
    ids = torch.tensor([[-1, 2, 0, 0, 2, 1], [1, 1, -1, -1, -1, -1]])
    assert chunk_first_positions(ids, 4).tolist() == [[2, 5, 1, -1], [-1, 0, -1, -1]]


@pytest.mark.parametrize("name", ["projected_kl:reverse", "xtoken_hybrid"])
def test_a_new_w_is_read_again(name):
    """What an objective derives from W (pairs, support) follows the run's W."""
    name, _, rev = name.partition(":")
    hs, ws, ht, wt = heads(torch.float32)
    obj = tide_plugin.get_objective(name, reverse=bool(rev))
    for seed in (3, 4):
        proj = sparse_w(seed=seed)
        got = obj(inputs_for(hs, ws, ht, wt, batch_for(), proj, True))[name]
        want = tide_plugin.get_objective(name, reverse=bool(rev))(inputs_for(hs, ws, ht, wt, batch_for(), proj, True))[name]
        torch.testing.assert_close(got, want)
