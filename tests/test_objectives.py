"""The registered objectives on hand-built batches: values and gradients against
the functional API and plain gathers, aliases and presets, composition with the
shared chunk log-prob cache, pipeline checks and config validation."""

from __future__ import annotations

import pytest
import torch

import tide_plugin
from tide_plugin.batch import DistillBatch, DistillInputs, PipelineInfo
from tide_plugin.objectives import functional as fn
from tide_plugin.objectives.base import ComposedObjective, PipelineMismatchError
from tide_plugin.objectives.calm import CACHE_STUDENT_CHUNK_LP, CACHE_TEACHER_CHUNK_LP, Calm, ReverseCalm
from tide_plugin.objectives.kl import ReverseTokenKL, TokenKL
from tide_plugin.objectives.tidal import ChunkTidal, TokenTidal
from tide_plugin.training.normalise import local_denominators, normalise, part_units

B, L, LT, VS, VT, SHARED, C = 3, 8, 10, 11, 13, 9, 4


def per_unit(objective, inputs):
    """The parts as the trainer divides them outside training: an objective returns sums
    over its unit, each divided by the batch's own count of that unit (the documented means)."""
    units = part_units(objective)
    return normalise(objective(inputs), units, local_denominators(inputs.batch, sorted(set(units.values()))))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _base(pipeline, seed=0):
    g = _gen(seed)
    ids = torch.randint(0, VS, (B, L), generator=g)
    labels = ids.clone()
    labels[:, :2] = -100
    masked = (torch.rand(B, L, generator=g) < 0.6) & (labels != -100)
    masked[2] = False  # one example with nothing masked
    return dict(
        pipeline=pipeline,
        input_ids=ids,
        labels=labels,
        attention_mask=torch.ones(B, L, dtype=torch.bool),
        masked=masked,
        t=torch.tensor([0.2, 0.55, 0.9]),
    )


def same_inputs(dtype=torch.float32, progress=0.3):
    batch = DistillBatch(**_base("same"))
    s = (torch.randn(B, L, VS, generator=_gen(1)) * 3).to(dtype).requires_grad_(True)
    t = (torch.randn(B, L, VT, generator=_gen(2)) * 3).to(dtype)
    return DistillInputs(batch, s, t, progress=progress, shared_vocab_size=SHARED)


def shared_inputs(progress=0.3):
    fields = _base("shared")
    fields["pair_student"] = torch.tensor([[2, 3, 5, 7, 0], [2, 4, 6, 7, 7], [3, 4, 0, 0, 0]])
    fields["pair_teacher"] = torch.tensor([[3, 4, 6, 9, 0], [1, 2, 5, 8, 8], [4, 6, 0, 0, 0]])
    fields["pair_mask"] = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    fields["teacher_input_ids"] = torch.randint(0, VT, (B, LT), generator=_gen(3))
    batch = DistillBatch(**fields)
    s = (torch.randn(B, L, VS, generator=_gen(4)) * 3).requires_grad_(True)
    t = torch.randn(B, LT, VT, generator=_gen(5)) * 3
    return DistillInputs(batch, s, t, progress=progress, shared_vocab_size=SHARED)


def cross_inputs(dtype=torch.float32, progress=0.3, active=None):
    fields = _base("cross")
    fields["teacher_input_ids"] = torch.randint(0, VT, (B, LT), generator=_gen(6))
    fields["student_chunk_ids"] = torch.tensor(
        [[-1, -1, 0, 0, 1, 2, 2, 3], [-1, -1, 0, 1, 1, 2, 3, -1], [-1, -1, 0, 1, -1, -1, -1, -1]]
    )
    fields["teacher_chunk_ids"] = torch.tensor(
        [
            [-1, 0, 1, 1, 1, 2, 3, 3, -1, -1],
            [-1, 0, 0, 1, 2, 2, 3, 3, 3, -1],
            [-1, -1, 0, 0, 1, -1, -1, -1, -1, -1],
        ]
    )
    fields["num_chunks"] = torch.tensor([4, 4, 2])
    if active is None:
        active = torch.tensor([[1, 0, 1, 1], [1, 1, 0, 1], [0, 0, 0, 0]], dtype=torch.bool)
    fields["chunk_active"] = active
    batch = DistillBatch(**fields)
    s = (torch.randn(B, L, VS, generator=_gen(7)) * 2).to(dtype).requires_grad_(True)
    t = (torch.randn(B, LT, VT, generator=_gen(8)) * 2).to(dtype)
    return DistillInputs(batch, s, t, progress=progress)


def _grad(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    return g.float()


# -- token objectives ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name, reverse", [("kl", False), ("reverse_kl", True)])
def test_token_kl_objectives(name, reverse, dtype):
    inputs = same_inputs(dtype)
    parts = per_unit(tide_plugin.get_objective(name, temperature=1.5), inputs)
    assert list(parts) == [name]
    want = fn.token_kl(
        inputs.student_logits, inputs.teacher_logits, inputs.batch.masked,
        temperature=1.5, shared_vocab_size=SHARED, reverse=reverse,
    )
    torch.testing.assert_close(parts[name], want)
    # bf16: the objective's gradient (of the sum) is stored in bf16 and then divided by the
    # count, the mean's is divided first: one more bf16 rounding (8 bits) on one path
    tol = dict(rtol=1.6e-2, atol=1e-5) if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(_grad(parts[name], inputs.student_logits), _grad(want, inputs.student_logits), **tol)
    # plain: gather the masked rows, shared slice, float32
    s = inputs.student_logits[inputs.batch.masked][:, :SHARED].float() / 1.5
    t = inputs.teacher_logits[inputs.batch.masked][:, :SHARED].float() / 1.5
    ls, lt = s.log_softmax(-1), t.log_softmax(-1)
    kl = (ls.exp() * (ls - lt)).sum(-1) if reverse else (lt.exp() * (lt - ls)).sum(-1)
    torch.testing.assert_close(parts[name].detach(), (kl.mean() * 1.5**2).detach())


@pytest.mark.parametrize("name, reverse", [("kl_aligned", False), ("reverse_kl_aligned", True)])
def test_aligned_kl_objectives_read_pairs(name, reverse):
    inputs = shared_inputs()
    obj = tide_plugin.get_objective(name)
    loss = per_unit(obj, inputs)[obj.name]
    batch = inputs.batch
    # plain: a pair counts when pair_mask and the student position is masked
    rows_s, rows_t = [], []
    for b in range(B):
        for p in range(batch.pair_student.shape[1]):
            sp, tp = int(batch.pair_student[b, p]), int(batch.pair_teacher[b, p])
            if batch.pair_mask[b, p] and batch.masked[b, sp]:
                rows_s.append(inputs.student_logits[b, sp, :SHARED])
                rows_t.append(inputs.teacher_logits[b, tp, :SHARED])
    assert rows_s, "the hand-built batch must contain counted pairs"
    ls = (torch.stack(rows_s) / 2).log_softmax(-1)
    lt = (torch.stack(rows_t) / 2).log_softmax(-1)
    kl = (ls.exp() * (ls - lt)).sum(-1) if reverse else (lt.exp() * (lt - ls)).sum(-1)
    want = kl.mean() * 4
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(_grad(loss, inputs.student_logits), _grad(want, inputs.student_logits))


def test_token_tidal_objective():
    inputs = same_inputs(progress=0.3)
    obj = tide_plugin.get_objective("tidal", timestep_weight="midrange", decay="linear")
    loss = per_unit(obj, inputs)["tidal"]
    t = inputs.batch.t
    lam = (0.1 + 0.8 * 0.3) * (1 - t)  # linear decay at progress 0.3, both axes
    w = torch.exp(-((t - 0.5) ** 2) / (2 * 0.15**2))  # midrange omega(t)
    want = fn.tidal_kl(inputs.student_logits, inputs.teacher_logits, inputs.batch.masked, lam, weight=w,
                       shared_vocab_size=SHARED)
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(_grad(loss, inputs.student_logits), _grad(want, inputs.student_logits))


def test_token_tidal_aligned_objective():
    inputs = shared_inputs(progress=1.0)
    loss = per_unit(tide_plugin.get_objective("taid_aligned", axis="training_only"), inputs)["tidal"]
    batch = inputs.batch
    b_idx, sp, tp = fn.aligned_rows(batch.pair_student, batch.pair_teacher, batch.pair_mask, batch.masked)
    zs = inputs.student_logits[b_idx, sp, :SHARED]
    zt = inputs.teacher_logits[b_idx, tp, :SHARED]
    lam = 0.9  # training_only at progress 1: lambda_max
    r = torch.softmax(((1 - lam) * zs + lam * zt) / 2, -1).detach()
    want = (r * (r.log() - (zs / 2).log_softmax(-1))).sum(-1).mean() * 4
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(_grad(loss, inputs.student_logits), _grad(want, inputs.student_logits))


def test_token_objectives_without_masked_positions_give_zero():
    inputs = same_inputs()
    inputs.batch.masked = torch.zeros(B, L, dtype=torch.bool)
    for name in ("kl", "reverse_kl", "tidal"):
        loss = per_unit(tide_plugin.get_objective(name), inputs)[name]
        g = _grad(loss, inputs.student_logits)
        assert loss.item() == 0.0 and torch.isfinite(g).all() and (g == 0).all()


# -- chunk objectives ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name, reverse, bkl", [("calm", False, False), ("reverse_calm", True, False),
                                                ("reverse_calm", True, True)])
def test_calm_objectives(name, reverse, bkl, dtype):
    inputs = cross_inputs(dtype)
    batch = inputs.batch
    loss = per_unit(tide_plugin.get_objective(name, **({"bernoulli_kl": True} if bkl else {})), inputs)[name]
    # plain: every chunk's log-prob from a full float32 log_softmax, then the mean over active chunks
    def plain_lp(logits, ids, chunk_ids):
        lp = logits.float().log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)
        return torch.stack([torch.stack([lp[b][chunk_ids[b] == c].sum() for c in range(C)]) for b in range(B)])

    lp_s = plain_lp(inputs.student_logits, batch.input_ids, batch.student_chunk_ids)
    lp_t = plain_lp(inputs.teacher_logits, batch.teacher_input_ids, batch.teacher_chunk_ids)
    s = torch.exp(lp_s / 2).clamp(1e-7, 1 - 1e-7)
    q = torch.exp(lp_t / 2).clamp(1e-7, 1 - 1e-7)
    per = -(s * q.log() + (1 - s) * (1 - q).log()) if reverse else -(q * s.log() + (1 - q) * (1 - s).log())
    if bkl:  # KL(Bern(s) || Bern(q)): the reverse form plus the student's Bernoulli entropy
        per = per + s * s.log() + (1 - s) * (1 - s).log()
    want = per[batch.chunk_active].mean()
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    tol = dict(rtol=1.6e-2, atol=1e-5) if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(_grad(loss, inputs.student_logits), _grad(want, inputs.student_logits), **tol)
    # the cache holds the active chunks' log-probs, 0 for inactive chunks (whose tokens are not read)
    cached = inputs.cache[CACHE_STUDENT_CHUNK_LP].detach()
    torch.testing.assert_close(cached[batch.chunk_active], lp_s.detach()[batch.chunk_active])
    assert (cached[~batch.chunk_active] == 0).all()
    assert not inputs.cache[CACHE_TEACHER_CHUNK_LP].requires_grad


def _plain_chunk_lp(logits, ids, chunk_ids):
    """``[B, C]`` summed gold-token log-probs per chunk, from a full float32 log_softmax."""
    lp = logits.float().log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)
    return torch.stack([torch.stack([lp[b][chunk_ids[b] == c].sum() for c in range(C)]) for b in range(B)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunk_tidal_objective(dtype):
    """Value and gradient against a plain chunk TIDAL built from the logits alone
    (chunk log-probs, lambda and omega all computed here, not read back from the
    objective's cache)."""
    inputs = cross_inputs(dtype, progress=0.5)
    batch = inputs.batch
    loss = per_unit(tide_plugin.get_objective("alm_taid", timestep_weight="midrange", temperature=3.0), inputs)["tidal_calm"]
    lp_s = _plain_chunk_lp(inputs.student_logits, batch.input_ids, batch.student_chunk_ids)
    lp_t = _plain_chunk_lp(inputs.teacher_logits, batch.teacher_input_ids, batch.teacher_chunk_ids)
    t = batch.t
    lam = ((0.1 + 0.8 * 0.5) * (1 - t))[:, None]  # cosine decay at progress 0.5: g = 1/2; both axes
    omega = torch.exp(-((t - 0.5) ** 2) / (2 * 0.15**2))[:, None]
    s = torch.exp(lp_s / 3).clamp(1e-7, 1 - 1e-7)
    q = torch.exp(lp_t / 3).clamp(1e-7, 1 - 1e-7)
    m = ((1 - lam) * s.detach() + lam * q).clamp(1e-7, 1 - 1e-7)
    per = -(m * s.log() + (1 - m) * (1 - s).log()) * omega
    want = per[batch.chunk_active].sum() / batch.chunk_active.sum()
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    tol = dict(rtol=1.6e-2, atol=1e-5) if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(_grad(loss, inputs.student_logits), _grad(want, inputs.student_logits), **tol)


@pytest.mark.filterwarnings("ignore:composing .* with the reverse objective")
def test_composition_shares_chunk_log_probs():
    inputs = cross_inputs(progress=0.25)
    obj = tide_plugin.get_objective("calm+tidal_calm", calm={"weight": 0.5})
    assert isinstance(obj, ComposedObjective) and obj.requirements == {"chunks", "timestep", "progress"}
    assert obj.units == {"calm": "active_chunks", "tidal_calm": "active_chunks"}
    parts = per_unit(obj, inputs)
    assert list(parts) == ["calm", "tidal_calm"]
    lp_s = inputs.cache[CACHE_STUDENT_CHUNK_LP]
    # the parts side by side equal each objective on its own (calm weighted by 0.5)
    alone = cross_inputs(progress=0.25)
    torch.testing.assert_close(parts["calm"], 0.5 * per_unit(tide_plugin.get_objective("calm"), alone)["calm"])
    torch.testing.assert_close(parts["tidal_calm"], per_unit(tide_plugin.get_objective("tidal_calm"), alone)["tidal_calm"])
    # one gradient path for both parts: through the one cached student tensor
    g = torch.autograd.grad(parts["calm"] + parts["tidal_calm"], lp_s, retain_graph=True)[0]
    assert g.abs().sum() > 0
    # computed once: a second objective on the same inputs reads the cache, it does not recompute.
    # Planting known values proves it - the loss follows the cached tensors, not the logits.
    planted = cross_inputs()
    fake_s = torch.full((B, C), -0.5, requires_grad=True)
    fake_t = torch.full((B, C), -3.0)
    planted.cache[CACHE_STUDENT_CHUNK_LP] = fake_s
    planted.cache[CACHE_TEACHER_CHUNK_LP] = fake_t
    out = per_unit(tide_plugin.get_objective("reverse_calm+tidal_calm"), planted)
    torch.testing.assert_close(out["reverse_calm"], fn.calm(fake_s, fake_t, planted.batch.chunk_active, reverse=True))
    assert planted.cache[CACHE_STUDENT_CHUNK_LP] is fake_s


@pytest.mark.filterwarnings("ignore:composing .* with the reverse objective")
def test_chunk_objectives_without_active_chunks_give_zero():
    inputs = cross_inputs(active=torch.zeros(B, C, dtype=torch.bool))
    parts = per_unit(tide_plugin.get_objective("calm+reverse_calm+tidal_calm"), inputs)
    total = sum(parts.values())
    g = _grad(total, inputs.student_logits)
    assert total.item() == 0.0 and (g == 0).all()


def test_objective_weight_scales_parts():
    inputs = same_inputs()
    one = per_unit(tide_plugin.get_objective("reverse_kl"), inputs)["reverse_kl"]
    half = per_unit(tide_plugin.get_objective("reverse_kl", weight=0.25), inputs)["reverse_kl"]
    torch.testing.assert_close(half, 0.25 * one)
    torch.testing.assert_close(_grad(half, inputs.student_logits), 0.25 * _grad(one, inputs.student_logits))


# -- names, aliases, presets -----------------------------------------------------------------
@pytest.mark.parametrize(
    "name, cls, aligned",
    [
        ("kl", TokenKL, False),
        ("kl_aligned", TokenKL, True),
        ("reverse_kl", ReverseTokenKL, False),
        ("reverse_kl_aligned", ReverseTokenKL, True),
        ("calm", Calm, None),
        ("alm", Calm, None),
        ("reverse_calm", ReverseCalm, None),
        ("reverse_alm", ReverseCalm, None),
        ("tidal", TokenTidal, False),
        ("taid", TokenTidal, False),
        ("taid_aligned", TokenTidal, True),
        ("tidal_calm", ChunkTidal, False),
        ("alm_taid", ChunkTidal, False),
    ],
)
def test_aliases_build_the_right_objective(name, cls, aligned):
    obj = tide_plugin.get_objective(name)
    assert type(obj) is cls
    if aligned is not None:
        assert obj.config.aligned is aligned
        token_need = "pairs" if aligned else "token_alignment"
        if cls is not ChunkTidal:
            assert token_need in obj.requirements
    assert obj.config.temperature == 2.0 and obj.weight == 1.0
    # explicit configuration wins over an alias preset
    if name.endswith("_aligned"):
        assert tide_plugin.get_objective(name, aligned=False).config.aligned is False


def test_registry_lists_names_and_aliases():
    infos = tide_plugin.available("objective")
    expected = {
        "kl": ("kl_aligned",),
        "reverse_kl": ("reverse_kl_aligned",),
        "calm": ("alm",),
        "reverse_calm": ("reverse_alm",),
        "tidal": ("taid", "taid_aligned"),
        "tidal_calm": ("alm_taid", "reverse_alm_taid"),
    }
    for name, aliases in expected.items():
        assert infos[name].aliases == aliases and infos[name].distribution == "tide-plugin"
        assert infos[name].spec.config_cls is not None and infos[name].summary


# -- pipeline checks -------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:composing .* with the reverse objective")
def test_check_pipeline():
    same, shared, cross = PipelineInfo("same"), PipelineInfo("shared"), PipelineInfo("cross")
    with pytest.raises(PipelineMismatchError, match=r"objective 'calm' needs chunk alignment .* got pipeline 'same'"):
        tide_plugin.get_objective("calm").check_pipeline(same)
    with pytest.raises(PipelineMismatchError, match=r"'tidal_calm' needs chunk alignment"):
        tide_plugin.get_objective("tidal_calm").check_pipeline(shared)
    with pytest.raises(PipelineMismatchError, match=r"objective 'kl' needs token-level alignment .* got pipeline 'cross'"):
        tide_plugin.get_objective("kl").check_pipeline(cross)
    with pytest.raises(PipelineMismatchError, match="use a chunk-level objective"):
        tide_plugin.get_objective("tidal").check_pipeline(cross)
    with pytest.raises(PipelineMismatchError, match=r"'reverse_kl' needs template-aligned pairs"):
        tide_plugin.get_objective("reverse_kl_aligned").check_pipeline(same)
    with pytest.raises(PipelineMismatchError, match="the diffusion timestep t"):
        tide_plugin.get_objective("tidal").check_pipeline(PipelineInfo("same", has_timestep=False))
    with pytest.raises(PipelineMismatchError, match="training progress"):
        tide_plugin.get_objective("alm_taid").check_pipeline(PipelineInfo("cross", has_progress=False))
    with pytest.raises(PipelineMismatchError, match="'calm' needs chunk alignment"):
        tide_plugin.get_objective("kl+calm").check_pipeline(same)
    # the matching pipelines pass
    tide_plugin.get_objective("kl+reverse_kl+tidal").check_pipeline(same)
    tide_plugin.get_objective("kl_aligned+taid_aligned").check_pipeline(shared)
    tide_plugin.get_objective("calm+reverse_calm+tidal_calm").check_pipeline(cross)



@pytest.mark.parametrize("name", ["tidal", "taid", "kl", "reverse_kl"])
def test_position_objectives_on_shared_are_refused_when_built_naming_registered_names(name):
    """The shared pipeline's teacher reads another template: a position-by-position
    objective is refused by check_pipeline (the build-time check), never at step 1, and
    every name it suggests resolves in the registry (``tidal`` -> ``taid_aligned``)."""
    import re

    reg = tide_plugin.get_registry()
    with pytest.raises(PipelineMismatchError, match="position-by-position alignment") as err:
        tide_plugin.get_objective(name).check_pipeline(PipelineInfo("shared"))
    suggested = re.findall(r"use '([^']+)'", str(err.value))
    assert suggested and all(reg.resolve("objective", s) for s in suggested)
    tide_plugin.get_objective(suggested[0]).check_pipeline(PipelineInfo("shared"))
    with pytest.raises(ValueError, match=r"student length 8 != teacher length 10; use '(taid|kl|reverse_kl)_aligned'") as err:
        tide_plugin.get_objective(name)(shared_inputs())
    assert "tidal_aligned" not in str(err.value)

def test_missing_batch_fields_are_named():
    inputs = same_inputs()
    with pytest.raises(ValueError, match=r"objective 'calm' needs batch fields \['student_chunk_ids'"):
        tide_plugin.get_objective("calm")(inputs)
    with pytest.raises(ValueError, match=r"'kl' \(aligned\) needs batch.pair_student"):
        tide_plugin.get_objective("kl_aligned")(inputs)
    unaligned = shared_inputs()
    with pytest.raises(ValueError, match=r"student length 8 != teacher length 10; use .*'kl_aligned'"):
        tide_plugin.get_objective("kl")(unaligned)
    inputs.batch.t = None
    with pytest.raises(ValueError, match="needs the diffusion timestep batch.t"):
        tide_plugin.get_objective("tidal")(inputs)
    inputs.batch.masked = None
    with pytest.raises(ValueError, match="needs batch.masked"):
        tide_plugin.get_objective("reverse_kl")(inputs)


@pytest.mark.parametrize(
    "name, config, exc, message",
    [
        ("kl", {"temperature": 0}, ValueError, "temperature must be a finite number > 0, got 0"),
        ("reverse_kl", {"weight": -1.0}, ValueError, r"weight must be a finite number >= 0, got -1.0"),
        ("kl", {"aligned": "yes"}, ValueError, "aligned must be True or False, got 'yes'"),
        ("calm", {"temperature": "2"}, ValueError, "temperature must be a finite number > 0, got '2'"),
        ("calm", {"tau": 2.0}, TypeError, "unknown option 'tau' for objective 'calm'; valid: temperature, weight"),
        ("calm", {"wieght": 2.0}, TypeError,
         r"^unknown option 'wieght' for objective 'calm'; did you mean 'weight'\? valid: temperature, weight$"),
        ("tidal", {"decay": "exp"}, ValueError, r"decay 'exp' is not one of \('cosine', 'linear'\)"),
        ("tidal", {"axis": "all"}, ValueError, "axis 'all' is not one of"),
        ("tidal", {"timestep_weight": "mid"}, ValueError, "timestep_weight 'mid' is not one of"),
        ("tidal_calm", {"lambda_max": 1.5}, ValueError, r"lambda_max must be a number in \[0, 1\], got 1.5"),
        ("tidal_calm", {"aligned": True}, ValueError, "aligned=True applies to token TIDAL"),
        ("calm", {"bernoulli_kl": True}, TypeError, "unknown option 'bernoulli_kl' for objective 'calm'"),
        ("reverse_calm", {"bernoulli_kl": 1}, ValueError, "bernoulli_kl must be True or False, got 1"),
    ],
)
def test_config_validation(name, config, exc, message):
    with pytest.raises(exc, match=message):
        tide_plugin.get_objective(name, **config)


@pytest.mark.parametrize("spec", ["tidal+reverse_kl", "alm_taid+reverse_alm"])
def test_tidal_with_a_reverse_objective_warns(spec):
    with pytest.warns(UserWarning, match="TIDAL pairs with forward objectives only"):
        tide_plugin.get_objective(spec)


@pytest.mark.parametrize("spec", ["tidal+kl", "tidal_calm+calm", "reverse_calm+calm"])
def test_forward_compositions_do_not_warn(spec):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tide_plugin.get_objective(spec)


# -- the contract: requirements, units, metrics, direction -----------------------------------
REQUIREMENTS_AND_UNITS = {
    "kl": ({"token_alignment"}, "masked_rows"),
    "kl_aligned": ({"pairs"}, "pairs"),
    "reverse_kl_aligned": ({"pairs"}, "pairs"),
    "calm": ({"chunks"}, "active_chunks"),
    "reverse_alm": ({"chunks"}, "active_chunks"),
    "tidal": ({"token_alignment", "timestep", "progress"}, "masked_rows"),
    "taid_aligned": ({"pairs", "timestep", "progress"}, "pairs"),
    "tidal_calm": ({"chunks", "timestep", "progress"}, "active_chunks"),
}


@pytest.mark.parametrize("name", sorted(REQUIREMENTS_AND_UNITS))
def test_requirements_and_unit_are_known_without_building(name, monkeypatch):
    """The config class declares them: with every objective class unable to build,
    they are still known, and the built objective agrees."""
    needs, unit = REQUIREMENTS_AND_UNITS[name]
    built = tide_plugin.get_objective(name)
    assert built.requirements == needs and built.units == {built.name: unit}

    def refuse(self, **config):
        raise AssertionError("built an objective to read its requirements")

    for cls in (TokenKL, Calm, TokenTidal, ChunkTidal):
        monkeypatch.setattr(cls, "__init__", refuse)
    assert tide_plugin.objective_requirements(name) == needs
    assert tide_plugin.get_registry().objective_config(name).unit == unit


def test_composed_requirements_without_building():
    assert tide_plugin.objective_requirements("kl_aligned+taid_aligned") == {"pairs", "timestep", "progress"}
    assert tide_plugin.objective_requirements("calm+tidal", calm={"weight": 0.5}) == {
        "chunks", "token_alignment", "timestep", "progress"
    }
    with pytest.raises(TypeError, match="name no component"):
        tide_plugin.objective_requirements("calm+tidal", temperature=1.0)


def test_tidal_reports_its_own_lambda():
    """The trainer logs what objectives report: TIDAL's mean lambda of the batch."""
    inputs = same_inputs(progress=0.5)
    t = inputs.batch.t
    obj = tide_plugin.get_objective("tidal+kl")
    metrics = obj.metrics(inputs)
    assert set(metrics) == {"lambda/tidal"}
    torch.testing.assert_close(metrics["lambda/tidal"], ((0.1 + 0.8 * 0.5) * (1 - t)).mean())
    assert not metrics["lambda/tidal"].requires_grad
    assert tide_plugin.get_objective("calm").metrics(cross_inputs()) == {}


@pytest.mark.parametrize("name, direction", [("kl", "forward"), ("reverse_kl", "reverse"), ("calm", "forward"),
                                             ("reverse_calm", "reverse"), ("tidal", "forward")])
def test_direction_selects_the_divergence(name, direction):
    obj = tide_plugin.get_objective(name)
    assert obj.direction == direction


@pytest.mark.parametrize("name", ["kl", "reverse_kl", "tidal"])
def test_the_suggested_aligned_alias_is_registered_and_reads_pairs(name):
    """The alias an objective suggests on a template-pair pipeline is a registered name of the
    same objective that sets aligned=True (so the hint never names something that fails)."""
    from tide_plugin.registry import get_objective, get_registry

    alias = get_objective(name).aligned_alias
    resolved = get_registry().resolve("objective", alias)
    assert resolved.spec.name == name and resolved.spec.alias_config[alias].get("aligned") is True
    assert get_objective(alias).config.aligned is True
