"""Meta-tests of the plugin contract: every hook is documented, mapped to a kind,
and exercised end to end through the registry."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest

import tide_plugin
from helpers.distill import three_chunk_batch
from tide_plugin import hookspecs
from tide_plugin.hookspecs import HOOKS_BY_KIND, KINDS, PROTOCOL_BY_KIND, PluginSpec, hookimpl
from tide_plugin.registry import PluginContractError, Registry, get_registry

HOOK_NAMES = sorted(
    name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "tide_plugin_spec")
)


def test_every_hook_is_a_kind_and_every_kind_a_hook():
    assert HOOK_NAMES == sorted(HOOKS_BY_KIND.values())
    assert set(HOOKS_BY_KIND) == set(KINDS)
    assert set(PROTOCOL_BY_KIND) == set(KINDS), "every kind states what its factory builds"


@pytest.mark.parametrize("hook_name", HOOK_NAMES)
def test_every_hook_is_documented(hook_name):
    doc = inspect.getdoc(getattr(hookspecs, hook_name)) or ""
    assert len(doc.splitlines()[0]) > 10, f"{hook_name} lacks a summary line"
    assert ":return:" in doc, f"{hook_name} does not document its return value"
    assert inspect.signature(getattr(hookspecs, hook_name)).return_annotation != inspect.Signature.empty


class _Config:
    requirements = frozenset({"token_alignment"})
    unit = "masked_rows"

    def __init__(self, **config):
        self.__dict__.update(config)


class _Fits:
    """Has every member of every kind's protocol (values are irrelevant to the check)."""

    name = "fits"
    requirements = frozenset()
    units = {"fits": "masked_rows"}
    stage_input, requires, provides = "batch", frozenset(), frozenset()
    mask_token_id = None
    # the optional members, so that isinstance against each protocol holds
    reads_teacher, supports_projected_logits, interpolates_teacher, direction = True, False, False, "forward"
    components = ()
    run_context: dict = {}
    model = projected_logits = None

    def __init__(self, **config):
        self.config = config

    def __call__(self, data):
        return data

    def check_pipeline(self, info): ...
    def metrics(self, inputs): return {}
    def to(self, device): return self
    def alpha(self, t): ...
    def alpha_prime(self, t): ...
    def mask_prob(self, t): ...
    def elbo_weight(self, t): ...
    def lambda_(self, progress, t): ...
    def weight(self, t): ...
    def calls(self, block_length, budget): ...
    def select(self, confidence, masked, *, call, budget): ...
    def describe(self): return {}


def _plugin(kind, factory):
    def hook(self):
        return [PluginSpec(name=f"local_{kind}", factory=factory, summary=f"a local {kind}", config_cls=_Config)]

    return type("LocalPlugin", (), {HOOKS_BY_KIND[kind]: hookimpl(hook)})()


@pytest.mark.parametrize("kind", KINDS)
def test_every_hook_registers_and_builds_a_plugin(kind):
    reg = Registry()
    reg.register(_plugin(kind, _Fits), distribution="local-dist", version="9")
    info = reg.available(kind)[f"local_{kind}"]
    assert (info.distribution, info.version, info.summary) == ("local-dist", "9", f"a local {kind}")
    built = reg.build(kind, f"local_{kind}", x=1)
    assert isinstance(built, _Fits) and built.config == {"x": 1}
    assert isinstance(built, PROTOCOL_BY_KIND[kind])
    for other in KINDS:
        if other != kind:
            assert f"local_{kind}" not in reg.available(other)


@pytest.mark.parametrize("kind", KINDS)
def test_what_a_factory_builds_is_checked_against_its_kind(kind):
    """A factory whose product misses a member of the kind's protocol is refused
    when built, naming the plugin, its distribution and every missing member."""
    protocol = PROTOCOL_BY_KIND[kind]
    members = hookspecs.required_members(protocol)
    dropped = members[0]
    lacking = type("Lacking", (_Fits,), {})
    reg = Registry()
    reg.register(_plugin(kind, lambda **cfg: _without(lacking(**cfg), dropped)), distribution="sloppy-dist")
    with pytest.raises(PluginContractError) as err:
        reg.build(kind, f"local_{kind}")
    message = str(err.value)
    assert f"{kind} 'local_{kind}'" in message and "'sloppy-dist'" in message
    assert repr(dropped) in message and protocol.__name__ in message


def _without(obj, member):
    """``obj`` with ``member`` hidden (class attributes included)."""
    cls = type(obj)
    hidden = type(cls.__name__, (cls,), {member: property(lambda self: (_ for _ in ()).throw(AttributeError(member)))})
    obj.__class__ = hidden
    return obj


def test_protocols_ask_for_what_the_trainer_uses():
    """The members each protocol declares, required and optional (a change here is a
    change of the contract)."""
    required = {
        "objective": ("__call__", "check_pipeline", "metrics", "name", "requirements", "units"),
        "collator": ("__call__", "provides", "requires", "stage_input"),
        "masking_schedule": ("alpha", "alpha_prime", "elbo_weight", "mask_prob"),
        "strength_schedule": ("lambda_", "weight"),
        "teacher": ("__call__", "mask_token_id", "to"),
        "decoder": ("calls", "describe", "name", "select"),
    }
    optional = {
        "objective": {"components": "(the objective itself,)", "direction": "'forward'", "interpolates_teacher": "False",
                      "reads_teacher": "True", "supports_projected_logits": "False"},
        "collator": {"run_context": "mappingproxy({})"},
        "teacher": {"model": "None", "projected_logits": "None"},
    }
    assert {k: hookspecs.required_members(p) for k, p in PROTOCOL_BY_KIND.items()} == required
    assert {k: {n: repr(v) for n, v in hookspecs.member_defaults(p).items()}
            for k, p in PROTOCOL_BY_KIND.items() if hookspecs.member_defaults(p)} == optional
    for kind, p in PROTOCOL_BY_KIND.items():
        assert set(hookspecs.protocol_members(p)) == set(required[kind]) | set(optional.get(kind, ()))


# Every member of a plugin the trainer reads (training/, heads.py, objectives/base.py,
# cli/): each must be declared by its kind's protocol.
PROBED = {
    "objective": ("name", "units", "reads_teacher", "supports_projected_logits", "interpolates_teacher", "direction",
                  "components"),
    "teacher": ("to", "model", "projected_logits"),
    "collator": ("run_context", "stage_input", "requires", "provides"),
}


@pytest.mark.parametrize("kind", sorted(PROBED))
def test_every_member_the_trainer_reads_is_declared(kind):
    assert set(PROBED[kind]) <= set(hookspecs.protocol_members(PROTOCOL_BY_KIND[kind]))


def test_base_classes_carry_the_declared_defaults():
    from tide_plugin import Objective, TeacherAdapter

    class Plain(Objective):
        name = "plain"

        def forward(self, inputs):
            return {}

    plain = Plain()
    for name, default in hookspecs.member_defaults(hookspecs.ObjectiveProtocol).items():
        if name != "components":
            assert getattr(plain, name) == default, name
    assert plain.components == (plain,)
    composed = tide_plugin.get_objective("calm+reverse_calm")
    assert [c.name for c in composed.components] == ["calm", "reverse_calm"]
    assert [c.components for c in composed.components] == [(c,) for c in composed.components]
    assert callable(TeacherAdapter.projected_logits) and "model" in TeacherAdapter.__annotations__


def test_optional_members_are_not_required_and_read_with_their_defaults():
    """A plugin that implements only the required members still builds; reading an
    optional member it lacks gives the protocol's default."""

    class Bare:
        name = "bare"
        requirements = frozenset()
        units = {"bare": "masked_rows"}

        def __init__(self, **config): ...
        def __call__(self, inputs): return {}
        def check_pipeline(self, info): ...
        def metrics(self, inputs): return {}

    reg = Registry()
    reg.register(_plugin("objective", Bare), distribution="bare-dist")
    built = reg.build("objective", "local_objective")
    assert not isinstance(built, hookspecs.ObjectiveProtocol)  # isinstance checks every member
    protocol = hookspecs.ObjectiveProtocol
    assert hookspecs.member(built, protocol, "reads_teacher") is True
    assert hookspecs.member(built, protocol, "supports_projected_logits") is False
    assert hookspecs.member(built, protocol, "direction") == "forward"
    assert hookspecs.member(built, protocol, "components") == (built,)
    built.direction = "reverse"
    assert hookspecs.member(built, protocol, "direction") == "reverse"


def test_objective_spec_without_declared_requirements_is_refused():
    class NoConfig:
        @hookimpl
        def tide_plugin_objectives(self):
            return [PluginSpec(name="undeclared", factory=_Fits)]

    reg = Registry()
    with pytest.raises(PluginContractError, match=r"objective 'undeclared': PluginSpec.config_cls must .*'requirements' and 'unit'"):
        reg.register(NoConfig(), distribution="d")
    assert "undeclared" not in reg.available("objective")


@pytest.mark.parametrize("kind", KINDS)
def test_every_builtin_fits_its_protocol(kind):
    """Every built-in of every kind, built with its defaults where it can be, fits."""
    reg = get_registry()
    for name, info in reg.available(kind).items():
        if info.distribution != "tide-plugin" or kind in ("teacher", "collator"):
            continue  # teachers need a model, collator stages ids: both are built in their own tests
        assert isinstance(reg.build(kind, name), PROTOCOL_BY_KIND[kind]), name


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_builtins(kind):
    infos = get_registry().available(kind)
    assert any(i.distribution == "tide-plugin" for i in infos.values()), f"no built-in {kind}"


def test_hookimpl_is_exported_from_package_root():
    assert tide_plugin.hookimpl is hookspecs.hookimpl
    assert tide_plugin.PluginSpec is PluginSpec


def test_tide_plugins_command_lists_builtins_and_example():
    out = subprocess.run(
        [sys.executable, "-m", "tide_plugin.cli", "plugins"], capture_output=True, text=True, check=True
    ).stdout
    header = out.splitlines()[0].split()
    assert header == ["kind", "name", "aliases", "distribution", "summary"]
    rows = {tuple(line.split()[:2]) for line in out.splitlines()[2:] if line.strip()}
    for kind, name in [
        ("objective", "reverse_calm"),
        ("objective", "tidal"),
        ("objective", "jensen_shannon"),
        ("collator", "comp_demo"),
        ("strength_schedule", "tidal"),
        ("masking_schedule", "cosine"),
        ("teacher", "bidirectional"),
    ]:
        assert (kind, name) in rows, out
    example = next(line for line in out.splitlines() if " jensen_shannon " in line)
    assert "jsd" in example and "tide-plugin-example 0.1.0" in example


def test_tide_plugins_kind_filter_and_unknown_command():
    out = subprocess.run(
        [sys.executable, "-m", "tide_plugin.cli", "plugins", "--kind", "teacher"], capture_output=True, text=True, check=True
    ).stdout
    kinds = {line.split()[0] for line in out.splitlines()[2:] if line.strip()}
    assert kinds == {"teacher"}
    bad = subprocess.run([sys.executable, "-m", "tide_plugin.cli", "distil"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command 'distil'" in bad.stderr and "distill" in bad.stderr


def test_readme_chunk_objective_example_works(monkeypatch):
    """The README's plugin example, run as written: registered, its requirements
    read without building it, built, and its loss equal to the formula it states."""
    import re
    import types
    from pathlib import Path

    import torch

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("**A chunk objective, start to finish.**") :]
    source = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = types.ModuleType("readme_chunk_mse")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look their module up
    exec(compile(source, "README.md", "exec"), module.__dict__)  # noqa: S102 - our own documentation
    reg = Registry()
    reg.register(module, distribution="readme-example")
    assert reg.objective_config("chunk_mse").requirements == {"chunks"}
    obj = reg.build("objective", "chunk_mse", temperature=1.5)
    assert obj.units == {"chunk_mse": "active_chunks"}

    g = torch.Generator().manual_seed(0)
    b, length, v = 2, 6, 9
    ids = torch.randint(0, v, (b, length), generator=g)
    batch = three_chunk_batch(ids)
    zs = torch.randn(b, length, v, generator=g, requires_grad=True)
    zt = torch.randn(b, length, v, generator=g)
    loss = obj(tide_plugin.DistillInputs(batch=batch, student_logits=zs, teacher_logits=zt))["chunk_mse"]
    terms = []
    for i in range(b):
        lp_s = zs[i].log_softmax(-1).gather(-1, ids[i, :, None])[:, 0]
        lp_t = zt[i].log_softmax(-1).gather(-1, ids[i, :, None])[:, 0]
        for c in range(3):
            if batch.chunk_active[i, c]:
                sel = batch.student_chunk_ids[i] == c
                terms.append((torch.exp(lp_s[sel].sum() / 1.5) - torch.exp(lp_t[sel].sum() / 1.5)) ** 2)
    torch.testing.assert_close(loss, torch.stack(terms).sum())  # a part is the sum over its unit


def test_package_root_exports_resolve_and_stay_light():
    for name in tide_plugin.__all__:
        assert getattr(tide_plugin, name) is not None, name
    code = "import sys, tide_plugin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False", "import tide_plugin must not import torch (the tide command starts light)"


def test_dir_lists_the_lazy_exports_without_importing_them():
    """``dir(tide_plugin)`` (what completion and help read) names every export,
    including the ones imported on first use, and listing them imports nothing."""
    code = (
        "import json, sys, tide_plugin; names = dir(tide_plugin); "
        "print(json.dumps([names, 'torch' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    names, torch_loaded = json.loads(out)
    expected = {"DistillBatch", "DistillInputs", "Objective", "MaskingSchedule", "TeacherAdapter", "functional",
                "active_chunk_log_probs", "token_rows", "get_objective", "hookimpl", "__version__"}
    assert expected <= set(names) and set(tide_plugin.__all__) <= set(names)
    assert names == sorted(names) and not torch_loaded


def test_example_plugin_imports_only_the_package_root():
    import ast
    from pathlib import Path

    import tide_plugin_example.jensen_shannon as example

    tree = ast.parse(Path(example.__file__).read_text())
    ours = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("tide_plugin")}
    ours |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names if a.name.startswith("tide_plugin")}
    assert ours == {"tide_plugin"}
