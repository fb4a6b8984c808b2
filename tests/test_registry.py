"""Registry: discovery through real installed entry points, lookup, errors."""

from __future__ import annotations

import math
import sys
import textwrap
import warnings
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

import tide_plugin
from tide_plugin import PluginSpec, hookimpl
from tide_plugin.registry import (
    DISABLE_ENV,
    DuplicatePluginError,
    PluginLoadWarning,
    Registry,
    UnknownPluginError,
    get_registry,
)

BUILTIN_OBJECTIVES = {"kl", "reverse_kl", "calm", "reverse_calm", "tidal", "tidal_calm"}
REFERENCE_ALIASES = {
    "alm": "calm",
    "reverse_alm": "reverse_calm",
    "alm_taid": "tidal_calm",
    "taid": "tidal",
    "kl_aligned": "kl",
    "reverse_kl_aligned": "reverse_kl",
    "taid_aligned": "tidal",
}


@pytest.fixture()
def fresh_registry():
    """Reload the process-wide registry after the test so state never leaks. Request
    it before ``monkeypatch`` so the reload runs after sys.path and the environment
    are restored."""
    yield
    get_registry(reload=True)


def _make_distribution(root, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """Write a real (unpacked) distribution that importlib.metadata discovers on sys.path."""
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    eps = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[tide_plugin]\n{eps}\n")
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))


def _objective_module(*names: str, extra: str = "") -> str:
    """Source of a plugin module offering a minimal, well-formed objective under each name."""
    specs = ", ".join(f"PluginSpec(name={n!r}, factory=lambda **c: Zero({n!r}, **c), config_cls=ZeroConfig)" for n in names)
    return (
        textwrap.dedent("""
            from dataclasses import dataclass
            from typing import ClassVar
            from tide_plugin import Objective, PluginSpec, hookimpl

            @dataclass(frozen=True)
            class ZeroConfig:
                weight: float = 1.0
                requirements: ClassVar[frozenset] = frozenset({"token_alignment"})
                unit: ClassVar[str] = "masked_rows"

            class Zero(Objective):
                def __init__(self, name, **config):
                    self.name, self.config = name, ZeroConfig(**config)

                def forward(self, inputs):
                    return {self.name: inputs.student_logits.sum() * 0.0}

            @hookimpl
            def tide_plugin_objectives():
                return [SPECS]
        """).replace("SPECS", specs)
        + textwrap.dedent(extra)
    )


@pytest.fixture()
def installed(fresh_registry, tmp_path, monkeypatch):
    """Install throw-away distributions (dist-info on sys.path) and forget their modules afterwards."""
    modules: list[str] = []

    def install(dist: str, entry_points: dict[str, str], sources: dict[str, str]) -> None:
        _make_distribution(tmp_path, dist, entry_points, sources)
        modules.extend(sources)

    monkeypatch.syspath_prepend(str(tmp_path))
    yield install
    for mod in modules:
        sys.modules.pop(mod, None)


def test_builtins_registered_through_own_entry_points():
    objectives = tide_plugin.available("objective")
    assert BUILTIN_OBJECTIVES <= set(objectives)
    for name in BUILTIN_OBJECTIVES:
        assert objectives[name].distribution == "tide-plugin"
        assert objectives[name].version == tide_plugin.__version__
        assert objectives[name].summary
    assert {"tidal"} <= set(tide_plugin.available("strength_schedule"))
    assert {"linear", "cosine"} <= set(tide_plugin.available("masking_schedule"))
    assert {"distill_pad", "noise", "comp_demo"} <= set(tide_plugin.available("collator"))
    assert {"bidirectional", "block"} <= set(tide_plugin.available("teacher"))
    assert not get_registry().failures, get_registry().failures


@pytest.mark.parametrize(("alias", "canonical"), sorted(REFERENCE_ALIASES.items()))
def test_reference_mode_strings_resolve(alias, canonical):
    assert get_registry().resolve("objective", alias).name == canonical
    assert alias in tide_plugin.available("objective")[canonical].aliases


def test_example_third_party_plugin_found_and_usable():
    info = tide_plugin.available("objective")["jensen_shannon"]
    assert info.distribution == "tide-plugin-example"
    assert info.version == "0.1.0"
    assert info.aliases == ("jsd",)
    obj = tide_plugin.get_objective("jsd", temperature=1.0)
    assert type(obj).__module__ == "tide_plugin_example.jensen_shannon"

    from tide_plugin.batch import DistillBatch, DistillInputs

    torch.manual_seed(0)
    b, length, v = 2, 5, 7
    zs = torch.randn(b, length, v, requires_grad=True)
    zt = torch.randn(b, length, v)
    masked = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 0, 1, 0]], dtype=torch.bool)
    ids = torch.zeros(b, length, dtype=torch.long)
    batch = DistillBatch(pipeline="same", input_ids=ids, labels=ids, attention_mask=masked | True, masked=masked)
    parts = obj(DistillInputs(batch=batch, student_logits=zs, teacher_logits=zt))
    # Plain Jensen-Shannon divergence, one masked position at a time.
    expected = []
    for i, j in masked.nonzero().tolist():
        p, q = zt[i, j].softmax(-1), zs[i, j].softmax(-1)
        m = (p + q) / 2
        expected.append(0.5 * (p * (p / m).log()).sum() + 0.5 * (q * (q / m).log()).sum())
    # a part is the sum over its unit (masked positions); the trainer divides it
    assert math.isclose(parts["jensen_shannon"].item(), torch.stack(expected).sum().item(), rel_tol=1e-5)
    parts["jensen_shannon"].backward()
    assert torch.isfinite(zs.grad).all() and zs.grad[~masked].abs().max() == 0


def test_unknown_name_is_keyerror_with_closest_match_and_listing():
    with pytest.raises(UnknownPluginError) as err:
        tide_plugin.get_objective("reverse_clam")
    assert isinstance(err.value, KeyError)
    message = str(err.value)
    assert "Did you mean 'reverse_calm'?" in message
    for name in BUILTIN_OBJECTIVES | {"jensen_shannon", "alm"}:
        assert name in message
    with pytest.raises(UnknownPluginError, match="unknown teacher 'bidirectionl'. Did you mean 'bidirectional'"):
        tide_plugin.get_teacher("bidirectionl")
    with pytest.raises(UnknownPluginError, match="unknown collator 'zzz'.  ?Available"):
        tide_plugin.get_collator("zzz")


def test_unknown_kind_is_rejected():
    with pytest.raises(
        ValueError, match="unknown plugin kind 'loss'; allowed: objective, collator, masking_schedule, strength_schedule, teacher"
    ):
        tide_plugin.available("loss")


@dataclass(frozen=True)
class _Cfg:
    aligned: bool = False
    requirements: ClassVar[frozenset] = frozenset({"token_alignment"})
    unit: ClassVar[str] = "masked_rows"


def _spec_plugin(*names: str, aliases=()):
    class Plugin:
        @hookimpl
        def tide_plugin_objectives(self):
            return [PluginSpec(name=n, factory=dict, summary="test", aliases=aliases, config_cls=_Cfg) for n in names]

    return Plugin()


def test_duplicate_name_names_both_distributions_and_registers_nothing():
    reg = Registry()
    reg.register(_spec_plugin("twin"), distribution="dist-one", version="1")
    with pytest.raises(DuplicatePluginError) as err:
        reg.register(_spec_plugin("other", "twin"), distribution="dist-two", version="2")
    assert "'dist-one'" in str(err.value) and "'dist-two'" in str(err.value) and "'twin'" in str(err.value)
    # all or nothing: the clashing plugin's other spec and its hooks are gone too
    assert set(reg.available("objective")) == {"twin"}
    assert reg.available("objective")["twin"].distribution == "dist-one"
    assert list(reg.plugins) == ["dist-one:Plugin"]


def test_a_plugin_is_registered_once_under_its_name():
    reg = Registry()
    reg.register(_spec_plugin("once"), distribution="dist-one")
    with pytest.raises(DuplicatePluginError, match="'dist-one:Plugin'.* registered already"):
        reg.register(_spec_plugin("other"), distribution="dist-one")
    assert set(reg.available("objective")) == {"once"}


def test_hooks_marked_by_pluggys_own_marker_still_register():
    """A plugin written against the pluggy marker of the project name (what
    ``tide_plugin.hookimpl`` was) is read the same way."""
    pluggy = pytest.importorskip("pluggy")
    mark = pluggy.HookimplMarker("tide_plugin")

    class Old:
        @mark
        def tide_plugin_objectives(self):
            return [PluginSpec(name="old_style", factory=dict, config_cls=_Cfg)]

        def tide_plugin_collators(self):  # not marked: not a hook implementation
            raise AssertionError("an unmarked function is never called")

    reg = Registry()
    reg.register(Old(), distribution="old-dist")
    assert reg.available("objective")["old_style"].distribution == "old-dist"


def test_alias_colliding_with_a_name_is_a_duplicate():
    reg = Registry()
    reg.register(_spec_plugin("alpha"), distribution="dist-one")
    with pytest.raises(DuplicatePluginError, match="'alpha'.*dist-one.*dist-two"):
        reg.register(_spec_plugin("beta", aliases=("alpha",)), distribution="dist-two")
    assert "beta" not in reg.available("objective")


@pytest.mark.parametrize(
    "kind, name, config, message",
    [
        ("objective", "calm", {"wieght": 1.0},
         "unknown option 'wieght' for objective 'calm'; did you mean 'weight'? valid: temperature, weight"),
        ("objective", "alm", {"temprature": 1.0},  # through an alias: the canonical name is named
         "unknown option 'temprature' for objective 'calm'; did you mean 'temperature'? valid: temperature, weight"),
        ("objective", "kl", {"wieght": 1.0, "tau": 2.0},
         "unknown options 'wieght' (did you mean 'weight'?), 'tau' for objective 'kl'; valid: aligned, temperature, weight"),
        # token TIDAL passes its schedule's options through: both sets are valid
        ("objective", "tidal", {"wieght": 1.0}, "unknown option 'wieght' for objective 'tidal'; did you mean 'weight'? "
         "valid: aligned, axis, decay, lambda_init, lambda_max, schedule, schedule_config, temperature, timestep_weight, weight"),
        ("objective", "tidal_calm", {"lamda_max": 0.5},
         "unknown option 'lamda_max' for objective 'tidal_calm'; did you mean 'lambda_max'? valid: "),
        ("objective", "tidal", {"schedule_config": {"decya": "linear"}},
         "unknown option 'decya' for strength_schedule 'tidal'; did you mean 'decay'? valid: "),
        ("masking_schedule", "linear", {"eps": 0.1}, "unknown option 'eps' for masking_schedule 'linear'; valid: (none)"),
        ("strength_schedule", "tidal", {"lamda_max": 0.5},
         "unknown option 'lamda_max' for strength_schedule 'tidal'; did you mean 'lambda_max'? valid: "),
        ("collator", "noise", {"sead": 1}, "unknown option 'sead' for collator 'noise'; did you mean 'seed'? valid: "),
        ("decoder", "fixed_k", {"kk": 2}, "unknown option 'kk' for decoder 'fixed_k'; did you mean 'k'? valid: k"),
        # the factory's own parameters (the teacher's model) are options too
        ("teacher", "bidirectional", {"modle": None}, "unknown option 'modle' for teacher 'bidirectional'; did you mean 'model'? valid: "),
    ],
)
def test_unknown_option_names_the_closest_and_the_valid_ones(kind, name, config, message):
    from tide_plugin.registry import UnknownOptionError

    with pytest.raises(UnknownOptionError) as err:
        get_registry().build(kind, name, **config)
    assert str(err.value).startswith(message), str(err.value)
    assert isinstance(err.value, TypeError) and isinstance(err.value, ValueError)


def test_unknown_option_is_caught_on_every_path_that_builds_a_config():
    with pytest.raises(TypeError, match="^unknown option 'wieght' for objective 'calm'; did you mean 'weight'"):
        tide_plugin.objective_requirements("calm", wieght=1.0)
    with pytest.raises(TypeError, match="^unknown option 'wieght' for objective 'reverse_calm'; did you mean 'weight'"):
        tide_plugin.get_objective("calm+reverse_calm", reverse_calm={"wieght": 1.0})
    # a valid option still builds, through the alias preset too
    assert tide_plugin.get_objective("kl_aligned", weight=0.5).config.aligned is True


def test_same_name_in_different_kinds_is_allowed():
    from tide_plugin.schedulers.tidal import TidalSchedule, TidalScheduleConfig

    class Both:
        @hookimpl
        def tide_plugin_objectives(self):
            return [PluginSpec(name="tidal_like", factory=dict, config_cls=_Cfg)]

        @hookimpl
        def tide_plugin_strength_schedules(self):
            return [PluginSpec(name="tidal_like", factory=TidalSchedule, config_cls=TidalScheduleConfig)]

    reg = Registry()
    reg.register(Both(), distribution="d")
    assert reg.resolve("objective", "tidal_like").spec.factory is dict
    assert isinstance(reg.build("strength_schedule", "tidal_like"), TidalSchedule)


def test_alias_config_preset_and_explicit_config_wins():
    class P:
        @hookimpl
        def tide_plugin_objectives(self):
            return [
                PluginSpec(
                    name="thing",
                    factory=dict,
                    aliases=("thing_aligned",),
                    alias_config={"thing_aligned": {"aligned": True}},
                    config_cls=_Cfg,
                )
            ]

    reg = Registry()
    reg.register(P(), distribution="d")
    assert reg.config_for("objective", "thing") == {}
    assert reg.config_for("objective", "thing_aligned") == {"aligned": True}
    assert reg.config_for("objective", "thing_aligned", aligned=False, x=1) == {"aligned": False, "x": 1}
    assert reg.objective_config("thing_aligned") == _Cfg(aligned=True)


def test_broken_plugins_are_reported_and_the_rest_load(installed):
    installed(
        "broken-dist",
        {"explodes": "tide_test_explodes", "missing": "tide_test_no_such_module", "bad_hook": "tide_test_bad_hook"},
        {
            "tide_test_explodes": "raise RuntimeError('boom at import')\n",
            "tide_test_bad_hook": """
                from tide_plugin import hookimpl
                @hookimpl
                def tide_plugin_objectives():
                    return ["not a PluginSpec"]
            """,
        },
    )
    installed("good-dist", {"fine": "tide_test_fine"}, {"tide_test_fine": _objective_module("fine_objective")})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg = get_registry(reload=True)
    messages = [str(w.message) for w in caught if issubclass(w.category, PluginLoadWarning)]
    assert len(messages) == 3, messages
    assert all("'broken-dist'" in m for m in messages)
    assert any("boom at import" in m and "tide_test_explodes" in m for m in messages)
    assert any("ModuleNotFoundError" in m and "tide_test_no_such_module" in m for m in messages)
    assert any("expected PluginSpec" in m for m in messages)
    assert {(f.distribution, f.entry_point) for f in reg.failures} == {
        ("broken-dist", "explodes"),
        ("broken-dist", "missing"),
        ("broken-dist", "bad_hook"),
    }
    objectives = reg.available("objective")
    assert objectives["fine_objective"].distribution == "good-dist"
    assert BUILTIN_OBJECTIVES <= set(objectives)
    assert "jensen_shannon" in objectives
    # A plugin whose hook failed leaves nothing half-registered.
    assert not [p for p in reg.plugins.values() if getattr(p, "__name__", "") == "tide_test_bad_hook"]


def test_clashing_distributions_skip_the_later_one_whole_and_the_rest_load(installed):
    """Through the real entry-point load path: a name claimed by two installed
    distributions stays with the one loaded first (built-ins load before any third
    party); the later plugin is skipped whole, reported naming both distributions,
    and the distributions sorted after the clash still load."""
    installed("clash-a", {"first": "tide_test_clash_a"}, {"tide_test_clash_a": _objective_module("twin_loss", "a_only")})
    # clash-b offers a schedule besides the clashing objective: neither may stay registered
    installed(
        "clash-b",
        {"second": "tide_test_clash_b"},
        {
            "tide_test_clash_b": _objective_module(
                "b_only",
                "twin_loss",
                extra="""
                from tide_plugin.schedulers.tidal import TidalSchedule, TidalScheduleConfig

                @hookimpl
                def tide_plugin_strength_schedules():
                    return [PluginSpec(name="b_schedule", factory=TidalSchedule, config_cls=TidalScheduleConfig)]
                """,
            )
        },
    )
    installed("clash-c", {"third": "tide_test_clash_c"}, {"tide_test_clash_c": _objective_module("c_only")})
    # sorted before every other third party, and still loses to the built-in it shadows
    installed("aaa-steals-calm", {"steal": "tide_test_steal"}, {"tide_test_steal": _objective_module("calm", "aaa_only")})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg = get_registry(reload=True)
    messages = [str(w.message) for w in caught if issubclass(w.category, PluginLoadWarning)]
    assert len(messages) == 2, messages
    twin = next(m for m in messages if "'twin_loss'" in m)
    assert "'clash-a'" in twin and "'clash-b'" in twin and "DuplicatePluginError" in twin
    # the reason is quoted mid-sentence: one full stop between it and what follows
    assert ".." not in twin and "=<distribution>. Disable it with" in twin
    steal = next(m for m in messages if "'calm'" in m)
    assert "'tide-plugin'" in steal and "'aaa-steals-calm'" in steal
    assert {(f.distribution, f.entry_point) for f in reg.failures} == {("clash-b", "second"), ("aaa-steals-calm", "steal")}
    objectives = reg.available("objective")
    assert objectives["twin_loss"].distribution == "clash-a" and objectives["a_only"].distribution == "clash-a"
    assert objectives["c_only"].distribution == "clash-c"  # sorted after the clash: loaded
    assert objectives["calm"].distribution == "tide-plugin"  # built-ins win
    assert "b_only" not in objectives and "aaa_only" not in objectives  # nothing half-registered
    assert "b_schedule" not in reg.available("strength_schedule")
    names = set(reg.plugins)
    assert "clash-c:third" in names and "clash-b:second" not in names and "aaa-steals-calm:steal" not in names
    assert tide_plugin.get_objective("twin_loss").name == "twin_loss"


def test_retired_or_misspelt_hook_fails_only_its_plugin(installed):
    installed(
        "old-hooks",
        {"old": "tide_test_old_hook"},
        {
            "tide_test_old_hook": """
                from tide_plugin import hookimpl
                @hookimpl
                def tide_plugin_schedulers():
                    return []
            """
        },
    )
    installed("after-old", {"fine": "tide_test_after_old"}, {"tide_test_after_old": _objective_module("after_old")})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg = get_registry(reload=True)
    messages = [str(w.message) for w in caught if issubclass(w.category, PluginLoadWarning)]
    assert len(messages) == 1 and "unknown hook 'tide_plugin_schedulers'" in messages[0] and "'old-hooks'" in messages[0]
    assert "after_old" in reg.available("objective")


def test_disable_env_blocks_distributions(fresh_registry, monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, "tide_plugin_example, some-other")
    reg = get_registry(reload=True)
    assert "jensen_shannon" not in reg.available("objective")
    assert any(b.startswith("tide-plugin-example:") for b in reg.blocked)
    with pytest.raises(UnknownPluginError):
        tide_plugin.get_objective("jsd")
    assert BUILTIN_OBJECTIVES <= set(reg.available("objective"))


def test_registry_is_loaded_lazily_and_cached(fresh_registry):
    first = get_registry()
    assert get_registry() is first
    assert get_registry(reload=True) is not first


def test_composition_spec_errors():
    with pytest.raises(ValueError, match="empty component"):
        tide_plugin.get_objective("calm+")
    with pytest.raises(ValueError, match="names a component twice"):
        tide_plugin.get_objective("calm+calm")
    with pytest.raises(TypeError, match=r"configuration keys \['temperature'\] name no component"):
        tide_plugin.get_objective("calm+tidal_calm", temperature=3.0)
    with pytest.raises(UnknownPluginError, match="Did you mean 'tidal_calm'"):
        tide_plugin.get_objective("calm+tidal_clam")


@pytest.mark.filterwarnings("ignore:composing .* with the reverse objective")
def test_composition_builds_components_with_their_config():
    from tide_plugin.objectives.base import ComposedObjective

    obj = tide_plugin.get_objective("reverse_alm+alm_taid", reverse_alm={"weight": 0.5})
    assert isinstance(obj, ComposedObjective)
    names = [c.name for c in obj.components]
    assert names == ["reverse_calm", "tidal_calm"]
    assert obj.components[0].weight == 0.5 and obj.components[1].weight == 1.0
    assert obj.requirements >= {"chunks"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "Bad-Name", "factory": dict}, "snake_case"),
        ({"name": "", "factory": dict}, "snake_case"),
        ({"name": "ok", "factory": 3}, "not callable"),
        ({"name": "ok", "factory": dict, "alias_config": {"other": {}}}, r"alias_config names \['other'\]"),
    ],
)
def test_plugin_spec_validation(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        PluginSpec(**kwargs)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_example_plugin_loss_value_and_gradient_match_plain(dtype, tol, temperature):
    """The example objective is a loss like any other: value and gradient vs a plain
    per-position Jensen-Shannon divergence, float32 and bfloat16."""
    from tide_plugin.batch import DistillBatch, DistillInputs

    torch.manual_seed(1)
    b, length, v = 3, 7, 11
    base = torch.randn(b, length, v) * 3
    zt = (torch.randn(b, length, v) * 3).to(dtype)
    masked = torch.rand(b, length) < 0.5
    masked[0, 0] = True
    ids = torch.zeros(b, length, dtype=torch.long)
    batch = DistillBatch(pipeline="same", input_ids=ids, labels=ids, attention_mask=torch.ones_like(masked), masked=masked)

    zs = base.to(dtype).clone().requires_grad_()
    got = tide_plugin.get_objective("jensen_shannon", temperature=temperature)(
        DistillInputs(batch=batch, student_logits=zs, teacher_logits=zt)
    )["jensen_shannon"]
    got.backward()

    ref_zs = base.to(dtype).double().detach().requires_grad_()
    terms = []
    for i, j in masked.nonzero().tolist():
        p = (zt[i, j].double() / temperature).softmax(-1)
        q = (ref_zs[i, j] / temperature).softmax(-1)
        m = (p + q) / 2
        terms.append(0.5 * (p * (p / m).log()).sum() + 0.5 * (q * (q / m).log()).sum())
    ref = torch.stack(terms).sum() * temperature**2  # a part is the sum over its unit
    ref.backward()
    assert abs(got.item() - ref.item()) <= tol * max(1.0, abs(ref.item()))
    torch.testing.assert_close(zs.grad.double(), ref_zs.grad, atol=tol, rtol=tol * 10)
