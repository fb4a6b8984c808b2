"""The registry of plugins: entry-point discovery, registration and lookup by name.

It is the one place plugins are registered. Loading happens in one function,
:meth:`Registry.load`, in a fixed order:

1. read the block-list ``TIDE_DISABLE_PLUGINS`` (comma-separated distribution names);
2. load this package's own entry points (the built-ins);
3. load every other distribution's entry points, sorted by distribution name;
   each plugin is registered all or nothing by :meth:`Registry.register`: every
   function it marks with :func:`~tide_plugin.hookspecs.hookimpl` must be a hook,
   each hook is called once, and the :class:`PluginSpec` objects it returns are
   checked and stored under the hook's kind.

A plugin whose import or registration fails - a broken module, a bad hook, a
name that an earlier distribution already registered (built-ins load first and
win) - is reported with a :class:`PluginLoadWarning` naming its distribution,
entry point and target (and, for a clash, the distribution that keeps the name);
nothing of it stays registered and the others still load. What a factory builds
is checked against its kind's protocol (:mod:`tide_plugin.hookspecs`) when it is
built. The registry knows no concrete plugin.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import threading
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from .hookspecs import (
    HOOKS_BY_KIND,
    IMPL_MARK,
    KINDS,
    PROJECT_NAME,
    PROTOCOL_BY_KIND,
    PluginKind,
    PluginSpec,
    missing_members,
)

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


class PluginContractError(PluginError, TypeError):
    """A plugin's spec or what its factory built does not fit its kind's protocol."""


class UnknownOptionError(PluginError, TypeError, ValueError):
    """A configuration keyword that the plugin's config class does not declare
    (a ``TypeError`` as Python's own unexpected keyword is, and a ``ValueError``
    as any other bad configuration value is)."""


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


def _implementations(plugin: object) -> dict[str, Any]:
    """Name -> each function of ``plugin`` marked with :func:`~tide_plugin.hookspecs.hookimpl`."""
    found = {}
    for name in dir(plugin):
        try:
            member = getattr(plugin, name)
        except Exception:  # a property of a plugin object that fails: not a hook
            continue
        if inspect.isroutine(member) and getattr(member, IMPL_MARK, None):
            found[name] = member
    return found


def _blocked_distributions() -> set[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return {_normalise(d) for d in raw.split(",") if d.strip()}


def _normalise(dist: str) -> str:
    return dist.strip().lower().replace("_", "-").replace(".", "-")


class Registry:
    """Holds every plugin by kind and name. Build one with :meth:`load`."""

    def __init__(self) -> None:
        self.plugins: dict[str, object] = {}
        """``"distribution:entry_point"`` -> each plugin registered (whole)."""
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
                reg.register(plugin, distribution=dist, version=version, entry_point=ep.name, target=ep.value)
            except Exception as exc:  # any failure of a third-party module: report it, load the rest
                reg._report(dist, ep.name, ep.value, exc)
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
        """Register a plugin object (a module, or an object whose methods implement
        hooks) and collect its specs, all or nothing: if it marks a function that is no
        hook, a hook fails or returns something other than :class:`PluginSpec`
        objects, or a spec claims a name already taken (by an earlier distribution;
        built-ins load first and win), nothing of the plugin is registered and the
        error is raised (:meth:`load` reports it and goes on). Used by :meth:`load`
        and by users who define plugins in a script."""
        entry_point = entry_point or getattr(plugin, "__name__", type(plugin).__name__)
        pname = f"{distribution}:{entry_point}"
        if pname in self.plugins:
            raise DuplicatePluginError(f"plugin {pname!r} (distribution:entry point) is registered already")
        collected = self._collect(plugin)
        self._check_new(collected, distribution, entry_point)
        self.plugins[pname] = plugin
        for kind, spec in collected:
            info = PluginInfo(kind, spec.name, tuple(spec.aliases), distribution, version, spec.summary, spec)
            self._plugins[kind][spec.name] = info
            for alias in spec.aliases:
                self._aliases[kind][alias] = spec.name

    def _collect(self, plugin: object) -> list[tuple[PluginKind, PluginSpec]]:
        """Call each hook ``plugin`` implements, in :data:`~tide_plugin.hookspecs.KINDS`
        order; a marked function that no hook is named after (a misspelt or retired
        hook) fails the plugin."""
        hooks = _implementations(plugin)
        unknown = sorted(set(hooks) - set(HOOKS_BY_KIND.values()))
        if unknown:
            raise PluginContractError(
                f"implements the unknown hook {unknown[0]!r}; hooks: {', '.join(HOOKS_BY_KIND.values())}"
            )
        collected: list[tuple[PluginKind, PluginSpec]] = []
        for kind, hook_name in HOOKS_BY_KIND.items():
            if hook_name not in hooks:
                continue
            for spec in hooks[hook_name]() or ():
                if not isinstance(spec, PluginSpec):
                    raise TypeError(f"{hook_name} returned {spec!r}, expected PluginSpec")
                if kind == "objective":
                    _check_objective_config(spec)
                collected.append((kind, spec))
        return collected

    def _check_new(self, collected: list[tuple[PluginKind, PluginSpec]], dist: str, entry_point: str) -> None:
        """Raise :class:`DuplicatePluginError` if a name or alias of ``collected`` is
        taken, by a registered plugin or by another spec of the same plugin."""
        claimed: dict[tuple[str, str], str] = {}
        for kind, spec in collected:
            table, aliases = self._plugins[kind], self._aliases[kind]
            for key in (spec.name, *spec.aliases):
                owner = table.get(key) or (table.get(aliases[key]) if key in aliases else None)
                if owner is not None:
                    raise DuplicatePluginError(
                        f"{kind} name {key!r} is registered twice: by {owner.distribution!r} "
                        f"({owner.kind} {owner.name!r}), loaded first, and by {dist!r} ({kind} {spec.name!r}, "
                        f"entry point {entry_point!r}), skipped. Uninstall one or block it with "
                        f"{DISABLE_ENV}=<distribution>."
                    )
                if (kind, key) in claimed:
                    raise DuplicatePluginError(
                        f"{kind} name {key!r} is claimed twice by {dist!r} ({claimed[kind, key]!r} and {spec.name!r})"
                    )
                claimed[kind, key] = spec.name

    def _report(self, dist: str, ep_name: str, target: str, exc: BaseException) -> None:
        # the reason is quoted inside a sentence: its own closing full stop would double ours
        failure = LoadFailure(dist, ep_name, target, f"{type(exc).__name__}: {str(exc).rstrip('. ')}")
        self.failures.append(failure)
        warnings.warn(
            f"tide-plugin: plugin {ep_name!r} ({target}) from distribution {dist!r} failed to load and "
            f"was skipped: {failure.error}. Disable it with {DISABLE_ENV}={dist}.",
            PluginLoadWarning,
            stacklevel=3,
        )

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

    def check_name(self, kind: PluginKind, name: str, what: str) -> None:
        """Raise ``ValueError`` if ``name`` is not registered for ``kind``, for config
        validation: ``"<what> 'x' is not one of the registered <kind>s (...). Did you mean ...?"``."""
        try:
            self.resolve(kind, name)
        except UnknownPluginError as exc:
            close = difflib.get_close_matches(str(name), exc.available, n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{what} {name!r} is not one of the registered {kind}s {tuple(exc.available)}.{hint}") from None

    def config_for(self, kind: PluginKind, name: str, **config: Any) -> dict[str, Any]:
        """The keywords :meth:`build` passes to the factory: the alias preset, then ``config``."""
        preset: Mapping[str, Any] = self.resolve(kind, name).spec.alias_config.get(name, {})
        return {**preset, **config}

    def build(self, kind: PluginKind, name: str, **config: Any) -> Any:
        """Build a configured plugin. Presets of an alias apply first; ``config`` wins.
        Raises :class:`PluginContractError` if what the factory built does not fit
        the kind's protocol (:data:`tide_plugin.hookspecs.PROTOCOL_BY_KIND`)."""
        info = self.resolve(kind, name)
        _check_options(kind, info, config)
        built = info.spec.factory(**self.config_for(kind, name, **config))
        protocol = PROTOCOL_BY_KIND.get(kind)  # every kind has one; a kind being added may not yet
        missing = missing_members(built, protocol) if protocol is not None else []
        if missing:
            raise PluginContractError(
                f"{kind} {info.name!r} from distribution {info.distribution!r} built a {type(built).__name__} "
                f"that lacks {missing} of {protocol.__name__}"
            )
        return built

    def objective_config(self, name: str, **config: Any) -> Any:
        """The config object of objective ``name`` (alias presets applied), which
        declares ``requirements`` and ``unit``; the objective itself is not built."""
        info = self.resolve("objective", name)
        _check_options("objective", info, config)
        return info.spec.config_cls(**self.config_for("objective", name, **config))

    def available(self, kind: PluginKind) -> dict[str, PluginInfo]:
        self._check_kind(kind)
        return dict(sorted(self._plugins[kind].items()))


def accepted_options(spec: PluginSpec, config: Mapping[str, Any] | None = None) -> list[str] | None:
    """The configuration keywords a plugin accepts: the fields of its config
    dataclass and the factory's own named parameters (a teacher's ``model``, for
    one). A config class whose ``__init__`` passes unknown keywords on to something
    else (token TIDAL's to its strength schedule) names what it accepts, given the
    configuration, with a classmethod ``option_names(config)``. ``None`` when the
    options cannot be known (no config dataclass, a factory that takes ``**kwargs``)."""
    def parameters(fn: Any) -> list[inspect.Parameter]:
        try:
            return list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):  # a builtin or C callable without a signature
            return []

    params = parameters(spec.factory)
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    cls = spec.config_cls
    if cls is not None and callable(getattr(cls, "option_names", None)):
        return sorted(set(cls.option_names(dict(config or {}))) | named)
    if cls is not None and dataclasses.is_dataclass(cls):
        if any(p.kind == p.VAR_KEYWORD for p in parameters(cls)):
            return None  # passes keywords on; it declares no option_names
        return sorted({f.name for f in dataclasses.fields(cls) if f.init} | named)
    if params and not any(p.kind == p.VAR_KEYWORD for p in params):
        return sorted(named)
    return None


def _check_options(kind: str, info: PluginInfo, config: Mapping[str, Any]) -> None:
    """Raise :class:`UnknownOptionError` for a keyword ``info``'s plugin does not
    accept: ``unknown option 'wieght' for objective 'calm'; did you mean 'weight'?
    valid: temperature, weight``."""
    valid = accepted_options(info.spec, config)
    if valid is None:
        return
    unknown = [k for k in config if k not in valid]
    if not unknown:
        return
    def closest(key: Any) -> str | None:
        close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
        return close[0] if close else None

    listing = f"valid: {', '.join(valid) or '(none)'}"
    if len(unknown) == 1:
        close = closest(unknown[0])
        hint = f"; did you mean {close!r}? " if close else "; "
        raise UnknownOptionError(f"unknown option {unknown[0]!r} for {kind} {info.name!r}{hint}{listing}")
    named = ", ".join(f"{k!r}" + (f" (did you mean {c!r}?)" if (c := closest(k)) else "") for k in unknown)
    raise UnknownOptionError(f"unknown options {named} for {kind} {info.name!r}; {listing}")


def _check_objective_config(spec: PluginSpec) -> None:
    cls = spec.config_cls
    lacking = [a for a in ("requirements", "unit") if cls is None or not hasattr(cls, a)]
    if lacking:
        raise PluginContractError(
            f"objective {spec.name!r}: PluginSpec.config_cls must be a config class declaring "
            f"'requirements' and 'unit' (ObjectiveConfigProtocol); "
            f"{'config_cls is None' if cls is None else f'{cls.__name__} lacks {lacking}'}"
        )


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
    parts = _components(name, config)
    reg = get_registry()
    if len(parts) == 1:
        return reg.build("objective", parts[0], **config)
    from .objectives.base import ComposedObjective

    return ComposedObjective([reg.build("objective", p, **dict(config.get(p, {}))) for p in parts])


def objective_requirements(name: str, **config: Any) -> frozenset[str]:
    """What objective ``name`` (an alias or an ``a+b`` spec, configured as for
    :func:`get_objective`) needs, read from its config class without building it
    (see :data:`tide_plugin.hookspecs.Requirement`)."""
    parts = _components(name, config)
    reg = get_registry()
    if len(parts) == 1:
        return frozenset(reg.objective_config(parts[0], **config).requirements)
    return frozenset().union(*(reg.objective_config(p, **dict(config.get(p, {}))).requirements for p in parts))


def _components(name: str, config: Mapping[str, Any]) -> list[str]:
    parts = [p.strip() for p in name.split("+")]
    if any(not p for p in parts):
        raise ValueError(f"objective spec {name!r} has an empty component; write names joined by '+'")
    if len(parts) > 1:
        if len(set(parts)) != len(parts):
            raise ValueError(f"objective spec {name!r} names a component twice")
        unused = set(config) - set(parts)
        if unused:
            raise TypeError(
                f"composed objective {name!r}: configuration keys {sorted(unused)} name no component; "
                f"pass a dict per component under one of {parts}"
            )
    return parts


def get_collator(name: str, **config: Any) -> Any:
    """Build a collator stage by name or alias."""
    return get_registry().build("collator", name, **config)


def get_masking_schedule(name: str, **config: Any) -> Any:
    """Build a masking schedule ``alpha(t)`` by name or alias."""
    return get_registry().build("masking_schedule", name, **config)


def get_strength_schedule(name: str, **config: Any) -> Any:
    """Build a distillation-strength schedule (TIDAL's lambda) by name or alias."""
    return get_registry().build("strength_schedule", name, **config)


def get_teacher(name: str, **config: Any) -> Any:
    """Build a teacher adapter by name or alias."""
    return get_registry().build("teacher", name, **config)
