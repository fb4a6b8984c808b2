"""The ``tidal`` schedule and the ``linear`` / ``cosine`` masking schedules (SPEC 1.3, 1.6, 5.3)."""

from __future__ import annotations

import math

import pytest
import torch

import tide_plugin
from tide_plugin.schedulers.masking import CosineSchedule, LinearSchedule
from tide_plugin.schedulers.tidal import TidalSchedule, TidalScheduleConfig

T = torch.tensor([1e-3, 0.1, 0.5, 0.9, 0.999])


@pytest.mark.parametrize("decay", ["cosine", "linear"])
@pytest.mark.parametrize("axis", ["both", "training_only", "timestep_only"])
def test_tidal_schedule_lambda(decay, axis):
    sched = tide_plugin.get_scheduler("tidal", decay=decay, axis=axis, lambda_init=0.2, lambda_max=0.8)
    assert isinstance(sched, TidalSchedule)
    g = {0.0: 0.0, 0.5: 0.5, 1.0: 1.0}
    for p in (0.0, 0.5, 1.0):
        lam_train = 0.2 + 0.6 * g[p]
        expected = {
            "both": lam_train * (1 - T),
            "training_only": torch.full_like(T, lam_train),
            "timestep_only": 0.8 * (1 - T),
        }[axis]
        got = sched.lambda_(p, T)
        assert got.shape == T.shape and got.dtype == torch.float32
        torch.testing.assert_close(got, expected)
    # progress 0.3 separates the decays: cosine (1 - cos(0.3 pi)) / 2 = 0.2061 vs linear 0.3
    g3 = (1 - math.cos(0.3 * math.pi)) / 2 if decay == "cosine" else 0.3
    if axis == "training_only":
        assert sched.lambda_(0.3, T)[0].item() == pytest.approx(0.2 + 0.6 * g3)


def test_tidal_schedule_defaults_and_monotone():
    sched = tide_plugin.get_scheduler("tidal")
    assert sched.config == TidalScheduleConfig(0.1, 0.9, "cosine", "both", "uniform")
    t = torch.zeros(1)
    lams = [sched.lambda_(p / 10, t).item() for p in range(11)]
    assert lams[0] == pytest.approx(0.1) and lams[-1] == pytest.approx(0.9)
    assert all(a < b for a, b in zip(lams, lams[1:]))


def test_tidal_schedule_weights():
    torch.testing.assert_close(tide_plugin.get_scheduler("tidal").weight(T), torch.ones(5))
    mid = tide_plugin.get_scheduler("tidal", timestep_weight="midrange").weight(T)
    torch.testing.assert_close(mid, torch.exp(-((T - 0.5) ** 2) / (2 * 0.15**2)))
    assert mid[2].item() == 1.0 and mid[0].item() < 0.01 and mid[3].item() == pytest.approx(math.exp(-0.16 / 0.045))


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
        tide_plugin.get_scheduler("tidal", **config)


def test_linear_masking_schedule():
    sched = tide_plugin.get_scheduler("linear")
    assert isinstance(sched, LinearSchedule)
    torch.testing.assert_close(sched.alpha(T), 1 - T)
    torch.testing.assert_close(sched.mask_prob(T), T)
    torch.testing.assert_close(sched.alpha_prime(T), -torch.ones(5))
    torch.testing.assert_close(sched.ce_weight(T), 1 / (T + 1e-6))
    torch.testing.assert_close(sched.ce_weight(T, kind="uniform"), torch.ones(5))
    assert sched.ce_weight(0.25).item() == pytest.approx(4.0, rel=1e-5)


def test_cosine_masking_schedule():
    sched = tide_plugin.get_scheduler("cosine")
    assert isinstance(sched, CosineSchedule)
    alpha = sched.alpha(T)
    torch.testing.assert_close(alpha, 1 - torch.cos(math.pi / 2 * (1 - T)))
    # alpha runs from ~1 (nothing masked) to ~0 (everything masked), decreasing
    assert alpha[0] > 0.998 and alpha[-1] < 0.002 and (alpha[1:] < alpha[:-1]).all()
    torch.testing.assert_close(sched.mask_prob(T), 1 - alpha)
    t64 = T.double()
    expected = (math.pi / 2) * torch.sin(math.pi / 2 * (1 - t64)) / (1 - (1 - torch.cos(math.pi / 2 * (1 - t64))) + 1e-6)
    torch.testing.assert_close(sched.ce_weight(T), expected.float())
    torch.testing.assert_close(sched.ce_weight(t64), expected)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_alpha_prime_is_the_derivative(name):
    sched = tide_plugin.get_scheduler(name)
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    numeric = (sched.alpha(t + h).double() - sched.alpha(t - h).double()) / (2 * h)
    torch.testing.assert_close(sched.alpha_prime(t).double(), numeric, rtol=1e-3, atol=1e-3)
    auto_t = t.clone().float().requires_grad_(True)
    (grad,) = torch.autograd.grad(sched.alpha(auto_t).sum(), auto_t)
    torch.testing.assert_close(sched.alpha_prime(auto_t.detach()), grad)


def test_masking_schedule_errors():
    sched = tide_plugin.get_scheduler("linear")
    with pytest.raises(ValueError, match=r"ce weight kind 'token' is not one of \('elbo', 'uniform'\)"):
        sched.ce_weight(T, kind="token")
    with pytest.raises(TypeError, match="t must be a float tensor"):
        sched.alpha(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        tide_plugin.get_scheduler("linear", eps=0.1)


def test_schedulers_are_registered_with_summaries():
    infos = tide_plugin.available("scheduler")
    for name in ("tidal", "linear", "cosine"):
        assert infos[name].distribution == "tide-plugin" and infos[name].summary
