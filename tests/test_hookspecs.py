"""Meta-tests of the plugin contract: every hook is documented, mapped to a kind,
and exercised end to end through the registry."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import tide_plugin
from tide_plugin import hookspecs
from tide_plugin.hookspecs import HOOKS_BY_KIND, KINDS, PluginSpec, hookimpl
from tide_plugin.registry import Registry, get_registry

HOOK_NAMES = sorted(
    name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "tide_plugin_spec")
)


def test_every_hook_is_a_kind_and_every_kind_a_hook():
    assert HOOK_NAMES == sorted(HOOKS_BY_KIND.values())
    assert set(HOOKS_BY_KIND) == set(KINDS)


@pytest.mark.parametrize("hook_name", HOOK_NAMES)
def test_every_hook_is_documented(hook_name):
    doc = inspect.getdoc(getattr(hookspecs, hook_name)) or ""
    assert len(doc.splitlines()[0]) > 10, f"{hook_name} lacks a summary line"
    assert ":return:" in doc, f"{hook_name} does not document its return value"
    assert inspect.signature(getattr(hookspecs, hook_name)).return_annotation != inspect.Signature.empty


@pytest.mark.parametrize("kind", KINDS)
def test_every_hook_registers_and_builds_a_plugin(kind):
    hook_name = HOOKS_BY_KIND[kind]

    def hook(self):
        return [PluginSpec(name=f"local_{kind}", factory=lambda **cfg: (kind, cfg), summary=f"a local {kind}")]

    plugin_cls = type("LocalPlugin", (), {hook_name: hookimpl(hook)})
    reg = Registry()
    reg.register(plugin_cls(), distribution="local-dist", version="9")
    info = reg.available(kind)[f"local_{kind}"]
    assert (info.distribution, info.version, info.summary) == ("local-dist", "9", f"a local {kind}")
    assert reg.build(kind, f"local_{kind}", x=1) == (kind, {"x": 1})
    for other in KINDS:
        if other != kind:
            assert f"local_{kind}" not in reg.available(other)


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
        ("scheduler", "tidal"),
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
