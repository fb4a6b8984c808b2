"""The strength schedule ``tidal`` and the masking schedules ``linear`` / ``cosine``
(docs/method.md#noising, docs/method.md#tidal): values against plain formulas, validation, and third-party
schedules of both kinds selected by name end to end."""

from __future__ import annotations

import math
import sys
import textwrap
import warnings

import pytest
import torch

import tide_plugin
from tide_plugin.registry import PluginLoadWarning, UnknownPluginError, get_registry
from tide_plugin.schedulers.masking import CosineSchedule, LinearSchedule
from tide_plugin.schedulers.tidal import TidalSchedule, TidalScheduleConfig, tidal_lambda, timestep_weight

T = torch.tensor([1e-3, 0.1, 0.5, 0.9, 0.999])


# -- the TIDAL strength schedule ------------------------------------------------------------
@pytest.mark.parametrize("decay", ["cosine", "linear"])
@pytest.mark.parametrize("axis", ["both", "training_only", "timestep_only"])
def test_tidal_schedule_lambda(decay, axis):
    sched = tide_plugin.get_strength_schedule("tidal", decay=decay, axis=axis, lambda_init=0.2, lambda_max=0.8)
    assert isinstance(sched, TidalSchedule)
    for p in (0.0, 0.3, 0.5, 1.0):
        g = (1 - math.cos(math.pi * p)) / 2 if decay == "cosine" else p  # cosine 0.2061 vs linear 0.3 at p=0.3
        lam_train = 0.2 + 0.6 * g
        expected = {
            "both": lam_train * (1 - T),
            "training_only": torch.full_like(T, lam_train),
            "timestep_only": 0.8 * (1 - T),
        }[axis]
        got = sched.lambda_(p, T)
        assert got.shape == T.shape and got.dtype == torch.float32
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(tidal_lambda(p, T, decay=decay, axis=axis, lambda_init=0.2, lambda_max=0.8), expected)


def test_tidal_schedule_defaults_and_monotone():
    sched = tide_plugin.get_strength_schedule("tidal")
    assert sched.config == TidalScheduleConfig(0.1, 0.9, "cosine", "both", "uniform")
    t = torch.zeros(1)
    lams = [sched.lambda_(p / 10, t).item() for p in range(11)]
    assert lams[0] == pytest.approx(0.1) and lams[-1] == pytest.approx(0.9)
    assert all(a < b for a, b in zip(lams, lams[1:]))


def test_tidal_schedule_weights():
    torch.testing.assert_close(tide_plugin.get_strength_schedule("tidal").weight(T), torch.ones(5))
    mid = tide_plugin.get_strength_schedule("tidal", timestep_weight="midrange").weight(T)
    torch.testing.assert_close(mid, torch.exp(-((T - 0.5) ** 2) / (2 * 0.15**2)))
    assert mid[2].item() == 1.0 and mid[0].item() < 0.01 and mid[3].item() == pytest.approx(math.exp(-0.16 / 0.045))
    torch.testing.assert_close(timestep_weight(T, "midrange"), mid)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"decay": "exponential"}, r"decay 'exponential' is not one of \('cosine', 'linear'\)"),
        ({"axis": "space"}, r"axis 'space' is not one of \('both', 'training_only', 'timestep_only'\)"),
        ({"timestep_weight": "gauss"}, r"timestep_weight 'gauss' is not one of \('uniform', 'midrange'\)"),
        ({"lambda_init": -0.1}, r"lambda_init must be a number in \[0, 1\], got -0.1"),
        ({"lambda_max": "0.9"}, r"lambda_max must be a number in \[0, 1\], got '0.9'"),
    ],
)
def test_tidal_schedule_config_errors(config, message):
    with pytest.raises(ValueError, match=message):
        tide_plugin.get_strength_schedule("tidal", **config)
    with pytest.raises(ValueError, match=message):  # the objective passes the fields through, checked by the schedule
        tide_plugin.get_objective("tidal", **config)


def test_tidal_schedule_input_errors():
    sched = tide_plugin.get_strength_schedule("tidal")
    with pytest.raises(ValueError, match=r"progress must be in \[0, 1\]"):
        sched.lambda_(1.5, T)
    with pytest.raises(ValueError, match=r"t must have shape \[b\]"):
        sched.lambda_(0.5, T[None])
    with pytest.raises(ValueError, match=r"decay 'exp' is not one of"):
        tidal_lambda(0.5, T, decay="exp")


# -- masking schedules ------------------------------------------------------------------------
def test_linear_masking_schedule():
    sched = tide_plugin.get_masking_schedule("linear")
    assert isinstance(sched, LinearSchedule)
    torch.testing.assert_close(sched.alpha(T), 1 - T)
    torch.testing.assert_close(sched.mask_prob(T), T)
    torch.testing.assert_close(sched.alpha_prime(T), -torch.ones(5))
    torch.testing.assert_close(sched.elbo_weight(T), 1 / (T + 1e-6))
    assert sched.elbo_weight(0.25).item() == pytest.approx(4.0, rel=1e-5)


def test_cosine_masking_schedule():
    sched = tide_plugin.get_masking_schedule("cosine")
    assert isinstance(sched, CosineSchedule)
    t64 = T.double()
    alpha_plain = 1 - torch.cos(math.pi / 2 * (1 - t64))  # docs/method.md#noising, in float64
    torch.testing.assert_close(sched.alpha(T), alpha_plain.float())
    # alpha runs from ~1 (nothing masked) to ~0 (everything masked), decreasing
    alpha = sched.alpha(T)
    assert alpha[0] > 0.998 and alpha[-1] < 0.002 and (alpha[1:] < alpha[:-1]).all()
    # mask_prob against the plain float64 value, at full float32 relative precision even
    # where 1 - alpha cancels (small t): a mask_prob computed as 1 - alpha(t) fails here
    mask_plain = torch.cos(math.pi / 2 * (1 - t64))
    small = torch.tensor([1e-5, 1e-4, 1e-3])
    torch.testing.assert_close(sched.mask_prob(T).double(), mask_plain, rtol=1e-6, atol=0)
    torch.testing.assert_close(
        sched.mask_prob(small).double(), torch.cos(math.pi / 2 * (1 - small.double())), rtol=1e-6, atol=0
    )
    expected = (math.pi / 2) * torch.sin(math.pi / 2 * (1 - t64)) / (1 - alpha_plain + 1e-6)
    torch.testing.assert_close(sched.elbo_weight(T), expected.float())
    torch.testing.assert_close(sched.elbo_weight(t64), expected)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_alpha_prime_is_the_derivative(name):
    sched = tide_plugin.get_masking_schedule(name)
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    numeric = (sched.alpha(t + h).double() - sched.alpha(t - h).double()) / (2 * h)
    torch.testing.assert_close(sched.alpha_prime(t).double(), numeric, rtol=1e-3, atol=1e-3)
    auto_t = t.clone().float().requires_grad_(True)
    (grad,) = torch.autograd.grad(sched.alpha(auto_t).sum(), auto_t)
    torch.testing.assert_close(sched.alpha_prime(auto_t.detach()), grad)


def test_masking_schedule_errors():
    sched = tide_plugin.get_masking_schedule("linear")
    with pytest.raises(TypeError, match="t must be a float tensor"):
        sched.alpha(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="unknown option 'eps' for masking_schedule 'linear'; valid: [(]none[)]"):
        tide_plugin.get_masking_schedule("linear", eps=0.1)
    with pytest.raises(UnknownPluginError, match="unknown masking_schedule 'cosin'. Did you mean 'cosine'"):
        tide_plugin.get_masking_schedule("cosin")


def test_schedules_are_registered_with_summaries():
    for kind, names in (("strength_schedule", ("tidal",)), ("masking_schedule", ("linear", "cosine"))):
        infos = tide_plugin.available(kind)
        for name in names:
            assert infos[name].distribution == "tide-plugin" and infos[name].summary


# -- third-party schedules of both kinds, end to end ---------------------------------------
THIRD_PARTY = '''
    import torch
    from dataclasses import dataclass
    from tide_plugin import MaskingSchedule, PluginSpec, hookimpl

    class Square(MaskingSchedule):
        """alpha(t) = 1 - t^2."""
        name = "square"

        def mask_prob(self, t):
            t = torch.as_tensor(t, dtype=torch.float32)
            return t * t

        def alpha_prime(self, t):
            return -2 * torch.as_tensor(t, dtype=torch.float32)

    @dataclass(frozen=True)
    class ConstantConfig:
        value: float = 0.5

    class Constant:
        """lambda = value everywhere; omega(t) = 2 - t."""
        def __init__(self, **config):
            self.config = ConstantConfig(**config)

        def lambda_(self, progress, t):
            return torch.full_like(t.float(), self.config.value)

        def weight(self, t):
            return 2.0 - t.float()

    @hookimpl
    def tide_plugin_masking_schedules():
        return [PluginSpec(name="square", factory=Square, summary="alpha = 1 - t^2")]

    @hookimpl
    def tide_plugin_strength_schedules():
        return [PluginSpec(name="constant_strength", factory=Constant, config_cls=ConstantConfig)]
'''


@pytest.fixture()
def third_party_schedules(tmp_path, monkeypatch):
    """Install a throw-away distribution offering one schedule of each kind."""
    info = tmp_path / "tide_test_schedules-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tide-test-schedules\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[tide_plugin]\nschedules = tide_test_schedules\n")
    (tmp_path / "tide_test_schedules.py").write_text(textwrap.dedent(THIRD_PARTY))
    with monkeypatch.context() as mp:
        mp.syspath_prepend(str(tmp_path))
        with warnings.catch_warnings():
            warnings.simplefilter("error", PluginLoadWarning)
            get_registry(reload=True)
        yield
    sys.modules.pop("tide_test_schedules", None)
    get_registry(reload=True)


def test_third_party_schedules_are_selected_by_name(third_party_schedules):
    """A third party's masking schedule drives the ``noise`` stage and its strength
    schedule drives token TIDAL, both chosen by registered name."""
    from tide_plugin.batch import DistillBatch, DistillInputs
    from tide_plugin.objectives import functional as fn

    assert tide_plugin.available("masking_schedule")["square"].distribution == "tide-test-schedules"
    # masking: t = 0.5 masks with probability 0.25 (the linear schedule would mask half)
    b, length = 64, 64
    ids = torch.arange(length).repeat(b, 1)
    batch = DistillBatch(pipeline="same", input_ids=ids, labels=ids.clone(), attention_mask=torch.ones(b, length, dtype=torch.bool))
    noise = tide_plugin.get_collator("noise", mask_id=999, schedule="square", seed=0)
    noised = noise(batch, t=torch.full((b,), 0.5))
    assert abs(noised.masked.float().mean().item() - 0.25) < 0.02
    torch.testing.assert_close(noised.ce_time_weight, torch.full((b,), 1.0 / (0.25 + 1e-6)))  # -alpha'/(1-alpha) = 2t/t^2

    # strength: lambda = 0.7 whatever the progress, omega = 2 - t
    g = torch.Generator().manual_seed(0)
    small = DistillBatch(pipeline="same", input_ids=ids[:3, :6], labels=ids[:3, :6], attention_mask=torch.ones(3, 6, dtype=torch.bool))
    small.masked = torch.rand(3, 6, generator=g) < 0.6
    small.t = torch.tensor([0.2, 0.5, 0.9])
    zs = torch.randn(3, 6, 11, generator=g, requires_grad=True)
    zt = torch.randn(3, 6, 11, generator=g)
    obj = tide_plugin.get_objective("tidal", schedule="constant_strength", value=0.7)
    inputs = DistillInputs(batch=small, student_logits=zs, teacher_logits=zt, progress=0.1)
    got = obj(inputs)["tidal"]
    want = fn.tidal_kl(zs, zt, small.masked, torch.full((3,), 0.7), weight=2.0 - small.t, reduction="sum")
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(obj.metrics(inputs)["lambda/tidal"], torch.tensor(0.7))
    # unknown names are caught by lookup, with the registered ones offered
    with pytest.raises(ValueError, match=r"masking schedule 'squares' is not one of the registered .*'square'.*Did you mean 'square'"):
        tide_plugin.get_collator("noise", mask_id=999, schedule="squares")
    with pytest.raises(UnknownPluginError, match="unknown strength_schedule 'constant'"):
        tide_plugin.get_objective("tidal_calm", schedule="constant")


def test_third_party_schedules_drive_a_training_run(third_party_schedules, tmp_path):
    """Through ``DistillConfig`` and the trainer: the masking schedule named by
    ``masking_schedule`` noises the batches, the strength schedule named in the
    objective's configuration sets the lambda the run logs."""
    from helpers.distill import EOS, MASK, V, synthetic_rows

    from tide_plugin.tiny import tiny_qwen3, tiny_qwen3_moe
    from tide_plugin.training import DistillConfig, build_trainer

    cfg = DistillConfig(
        output_dir=str(tmp_path / "run"), objective="tidal", pipeline="same", shared_vocab_size=V, block_size=4,
        masking_schedule="square", objective_config={"tidal": {"schedule": "constant_strength", "value": 0.7}},
        max_steps=1, logging_steps=1, per_device_train_batch_size=4, save_strategy="no", disable_tqdm=True,
        use_cpu=True, dataloader_pin_memory=False, report_to="none",
    )
    tr = build_trainer(cfg, student=tiny_qwen3(V, seed=0), teacher_model=tiny_qwen3_moe(V, seed=1),
                       train_dataset=synthetic_rows(8), student_mask_id=MASK, student_eos_id=EOS)
    noise = tr.data_collator.chain.stage("noise")
    assert type(noise.scheduler).__name__ == "Square"
    assert type(tr.objective.schedule).__name__ == "Constant"
    tr.train()
    logged = next(h for h in tr.state.log_history if "tidal" in h)
    assert logged["lambda/tidal"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="masking_schedule 'squre' is not one of the registered .*Did you mean 'square'"):
        DistillConfig(output_dir=str(tmp_path / "bad"), objective="tidal", pipeline="same", masking_schedule="squre",
                      use_cpu=True)


@pytest.mark.parametrize(("typed", "weighting"), [("scheduler", "elbo"), ("elbo", "elbo"), ("uniform", "uniform")])
def test_loss_weight_type_speaks_the_noise_stage_names(typed, weighting, tmp_path):
    """``loss_weight_type`` takes ``elbo`` or ``uniform``; dllm's ``scheduler`` stays
    accepted (and the default) and means ``elbo``; the noise stage gets the same name."""
    from tide_plugin.training import DistillConfig, build_collator

    cfg = DistillConfig(output_dir=str(tmp_path), objective="kl", pipeline="same", loss_weight_type=typed, use_cpu=True)
    assert cfg.ce_weighting == weighting
    chain = build_collator(cfg, student_eos_id=5, student_mask_id=6, teacher_mask_id=None).chain
    assert chain.stage("noise").config.ce_weighting == weighting
    assert DistillConfig(output_dir=str(tmp_path), objective="kl", pipeline="same", use_cpu=True).ce_weighting == "elbo"
    with pytest.raises(ValueError, match=r"loss_weight_type 'sum' is not one of \('elbo', 'uniform'\)"):
        DistillConfig(output_dir=str(tmp_path), objective="kl", pipeline="same", loss_weight_type="sum", use_cpu=True)
