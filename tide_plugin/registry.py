"""Plugin manager, entry-point discovery and lookup by name.

Loading happens in one function, :meth:`Registry.load`, in a fixed order:

1. add the hook specifications (:mod:`tide_plugin.hookspecs`);
2. read the block-list ``TIDE_DISABLE_PLUGINS`` (comma-separated distribution names);
3. load this package's own entry points (the built-ins);
4. load every other distribution's entry points, sorted by distribution name;
5. ``check_pending()``, then collect the :class:`PluginSpec` objects each plugin returns.

A plugin whose import or registration hook fails is reported with a
:class:`PluginLoadWarning` naming its distribution, entry point and target; the
others still load. The registry knows no concrete plugin.
"""

from __future__ import annotations

import difflib
import os
import threading
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .hookspecs import HOOKS_BY_KIND, KINDS, PROJECT_NAME, PluginKind, PluginSpec

OWN_DISTRIBUTION = "tide-plugin"
DISABLE_ENV = "TIDE_DISABLE_PLUGINS"


class PluginError(Exception):
    """Base class of the registry's errors."""


class UnknownPluginError(PluginError, KeyError):
    """No plugin of this kind is registered under the name or alias."""

    def __init__(self, kind: str, name: str, available: Iterable[str]):
        self.kind, self.name = kind, name
        self.available = sorted(available)
        close = difflib.get_close_matches(name, self.available, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        listing = ", ".join(self.available) if self.available else "(none registered)"
        self.message = f"unknown {kind} {name!r}.{hint} Available {kind}s: {listing}"
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


class DuplicatePluginError(PluginError):
    """Two plugins claim the same name (or alias) for one kind."""


class PluginLoadWarning(UserWarning):
    """A plugin could not be imported or registered; the others were loaded."""


@dataclass(frozen=True)
class PluginInfo:
    """What :func:`available` reports for one plugin."""

    kind: PluginKind
    name: str
    aliases: tuple[str, ...]
    distribution: str
    version: str
    summary: str
    spec: PluginSpec


@dataclass(frozen=True)
class LoadFailure:
    distribution: str
    entry_point: str
    target: str
    error: str


def _blocked_distributions() -> set[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return {_normalise(d) for d in raw.split(",") if d.strip()}


def _normalise(dist: str) -> str:
    return dist.strip().lower().replace("_", "-").replace(".", "-")


class Registry:
    """Holds every plugin by kind and name. Build one with :meth:`load`."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self._plugins: dict[str, dict[str, PluginInfo]] = {k: {} for k in KINDS}
        self._aliases: dict[str, dict[str, str]] = {k: {} for k in KINDS}
        self.failures: list[LoadFailure] = []
        self.blocked: list[str] = []

    # -- loading ---------------------------------------------------------
    @classmethod
    def load(cls) -> Registry:
        reg = cls()
        blocked = _blocked_distributions()
        eps = list(metadata.entry_points(group=PROJECT_NAME))
        own = [ep for ep in eps if ep.dist is not None and _normalise(ep.dist.name) == OWN_DISTRIBUTION]
        others = sorted(
            (ep for ep in eps if ep not in own),
            key=lambda ep: ((ep.dist.name if ep.dist else ""), ep.name),
        )
        for ep in own + others:
            dist = ep.dist.name if ep.dist is not None else "<unknown>"
            version = ep.dist.version if ep.dist is not None else "?"
            if _normalise(dist) in blocked:
                reg.blocked.append(f"{dist}:{ep.name}")
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # any import-time failure of a third-party module
                reg._report(dist, ep.name, ep.value, exc)
                continue
            reg.register(plugin, distribution=dist, version=version, entry_point=ep.name, target=ep.value)
        reg.pm.check_pending()
        return reg

    def register(
        self,
        plugin: object,
        *,
        distribution: str = "<local>",
        version: str = "",
        entry_point: str | None = None,
        target: str | None = None,
    ) -> None:
        """Register a plugin object (module or instance with hookimpls) and collect
        its specs. Used by :meth:`load` and by users who define plugins in a script."""
        entry_point = entry_point or getattr(plugin, "__name__", type(plugin).__name__)
        pname = f"{distribution}:{entry_point}"
        target = target or entry_point
        try:
            self.pm.register(plugin, name=pname)
        except Exception as exc:
            self._report(distribution, entry_point, target, exc)
            return
        collected: list[tuple[PluginKind, PluginSpec]] = []
        try:
            for kind, hook_name in HOOKS_BY_KIND.items():
                caller = getattr(self.pm.hook, hook_name)
                for impl in caller.get_hookimpls():
                    if impl.plugin_name != pname:
                        continue
                    specs = impl.function() or ()
                    for spec in specs:
                        if not isinstance(spec, PluginSpec):
                            raise TypeError(f"{hook_name} returned {spec!r}, expected PluginSpec")
                        collected.append((kind, spec))
        except Exception as exc:
            self.pm.unregister(name=pname)
            self._report(distribution, entry_point, target, exc)
            return
        for kind, spec in collected:
            self._add(kind, spec, distribution, version)

    def _report(self, dist: str, ep_name: str, target: str, exc: BaseException) -> None:
        failure = LoadFailure(dist, ep_name, target, f"{type(exc).__name__}: {exc}")
        self.failures.append(failure)
        warnings.warn(
            f"tide-plugin: plugin {ep_name!r} ({target}) from distribution {dist!r} failed to load and "
            f"was skipped: {failure.error}. Disable it with {DISABLE_ENV}={dist}.",
            PluginLoadWarning,
            stacklevel=3,
        )

    def _add(self, kind: PluginKind, spec: PluginSpec, dist: str, version: str) -> None:
        table, aliases = self._plugins[kind], self._aliases[kind]
        for key in (spec.name, *spec.aliases):
            owner = table.get(key) or (table.get(aliases[key]) if key in aliases else None)
            if owner is not None:
                raise DuplicatePluginError(
                    f"{kind} name {key!r} is registered twice: by {owner.distribution!r} "
                    f"({owner.kind} {owner.name!r}) and by {dist!r} ({kind} {spec.name!r}). "
                    f"Uninstall one or block it with {DISABLE_ENV}=<distribution>."
                )
        table[spec.name] = PluginInfo(kind, spec.name, tuple(spec.aliases), dist, version, spec.summary, spec)
        for alias in spec.aliases:
            aliases[alias] = spec.name

    # -- lookup ------------------------------------------------------------
    def _check_kind(self, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown plugin kind {kind!r}; allowed: {', '.join(KINDS)}")

    def resolve(self, kind: PluginKind, name: str) -> PluginInfo:
        """The plugin registered under ``name`` (a name or an alias)."""
        self._check_kind(kind)
        table = self._plugins[kind]
        canonical = self._aliases[kind].get(name, name)
        if canonical not in table:
            raise UnknownPluginError(kind, name, [*table, *self._aliases[kind]])
        return table[canonical]

    def build(self, kind: PluginKind, name: str, **config: Any) -> Any:
        """Build a configured plugin. Presets of an alias apply first; ``config`` wins."""
        info = self.resolve(kind, name)
        preset: Mapping[str, Any] = info.spec.alias_config.get(name, {})
        return info.spec.factory(**{**preset, **config})

    def available(self, kind: PluginKind) -> dict[str, PluginInfo]:
        self._check_kind(kind)
        return dict(sorted(self._plugins[kind].items()))


_lock = threading.Lock()
_registry: Registry | None = None


def get_registry(*, reload: bool = False) -> Registry:
    """The process-wide registry, loaded on first use (never at import time)."""
    global _registry
    with _lock:
        if _registry is None or reload:
            _registry = Registry.load()
        return _registry


def available(kind: PluginKind) -> dict[str, PluginInfo]:
    """Name -> :class:`PluginInfo` (aliases, distribution, version, summary) for one kind."""
    return get_registry().available(kind)


def get_objective(name: str, **config: Any) -> Any:
    """Build an objective by name, alias or composition spec.

    ``"a+b"`` composes objectives that share one student and one teacher forward;
    configuration for a component is passed as a dict under its name as written
    in the spec, e.g. ``get_objective("calm+tidal_calm", calm={"weight": 0.5})``.
    """
    parts = [p.strip() for p in name.split("+")]
    if any(not p for p in parts):
        raise ValueError(f"objective spec {name!r} has an empty component; write names joined by '+'")
    reg = get_registry()
    if len(parts) == 1:
        return reg.build("objective", parts[0], **config)
    if len(set(parts)) != len(parts):
        raise ValueError(f"objective spec {name!r} names a component twice")
    unused = set(config) - set(parts)
    if unused:
        raise TypeError(
            f"composed objective {name!r}: configuration keys {sorted(unused)} name no component; "
            f"pass a dict per component under one of {parts}"
        )
    from .objectives.base import ComposedObjective

    return ComposedObjective([reg.build("objective", p, **dict(config.get(p, {}))) for p in parts])


def get_collator(name: str, **config: Any) -> Any:
    """Build a collator stage by name or alias."""
    return get_registry().build("collator", name, **config)


def get_scheduler(name: str, **config: Any) -> Any:
    """Build a scheduler by name or alias."""
    return get_registry().build("scheduler", name, **config)


def get_teacher(name: str, **config: Any) -> Any:
    """Build a teacher adapter by name or alias."""
    return get_registry().build("teacher", name, **config)
