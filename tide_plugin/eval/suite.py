"""Evaluation suites: a named task list with each task's protocol, read from a
YAML file (``tide_plugin/eval/suites/<name>.yaml`` or a user's path).

The format is documented at the top of ``suites/paper.yaml``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..hookspecs import DEFAULT_BLOCK_SIZE

SUITES_DIR = Path(__file__).resolve().parent / "suites"
_PROTOCOL_KEYS = ("block_size", "cfg_scale", "chat_template", "think_injection", "fewshot_as_multiturn")
_TASK_KEYS = ("name", "task", "label", "max_new_tokens", "steps", "num_fewshot", "metric", "datasets", *_PROTOCOL_KEYS)


@dataclass(frozen=True)
class SuiteTask:
    """One row of a suite: the lm-eval task run and its protocol."""

    name: str
    task: str
    label: str
    max_new_tokens: int
    steps: int
    num_fewshot: int
    metric: str  # lm-eval's "metric,filter" key
    datasets: tuple[str, ...] = ()
    block_size: int = DEFAULT_BLOCK_SIZE
    cfg_scale: float = 0.0
    chat_template: bool = True
    think_injection: bool = True
    fewshot_as_multiturn: bool = False

    def __post_init__(self) -> None:
        where = f"suite task {self.name!r}"
        if not self.name or not self.task:
            raise ValueError(f"{where}: name and task must be non-empty")
        for key in ("max_new_tokens", "steps", "block_size"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{where}: {key} must be >= 1, got {getattr(self, key)}")
        if self.num_fewshot < 0:
            raise ValueError(f"{where}: num_fewshot must be >= 0, got {self.num_fewshot}")
        if self.steps > self.max_new_tokens:
            raise ValueError(f"{where}: steps ({self.steps}) must be <= max_new_tokens ({self.max_new_tokens})")
        if "," not in self.metric:
            raise ValueError(f"{where}: metric {self.metric!r} must be lm-eval's 'metric,filter' key, e.g. 'exact_match,none'")
        if self.cfg_scale != 0.0:
            raise ValueError(f"{where}: cfg_scale {self.cfg_scale} is not supported; only 0 (the paper's)")


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    tasks: tuple[SuiteTask, ...]
    published: dict[str, dict[str, float]] = field(default_factory=dict)
    published_average: dict[str, float] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError(f"suite {self.name!r} ({self.source}) has no tasks")
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"suite {self.name!r}: task names must be unique, repeated: {', '.join(dup)}")
        for column, scores in self.published.items():
            unknown = sorted(set(scores) - set(names))
            if unknown:
                raise ValueError(f"suite {self.name!r}: published column {column!r} names unknown tasks {unknown}")


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def load_suite(name_or_path: str) -> Suite:
    """A shipped suite by name (``paper``) or a suite file by path."""
    path = Path(name_or_path).expanduser()
    if not (path.suffix in (".yaml", ".yml") or path.is_file()):
        shipped = available_suites()
        if name_or_path not in shipped:
            close = difflib.get_close_matches(name_or_path, shipped, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                f"--suite {name_or_path!r} is not a shipped suite nor a suite file; {hint}"
                f"shipped: {', '.join(shipped)} (or pass a path to a suite .yaml)"
            )
        path = SUITES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"--suite {name_or_path!r}: no such suite file")
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"suite file {path} must hold a mapping, got {type(data).__name__}")
    return suite_from_dict(data, source=str(path))


def suite_from_dict(data: dict[str, Any], source: str = "") -> Suite:
    unknown = sorted(set(data) - {"name", "description", "protocol", "tasks", "published", "published_average"})
    if unknown:
        raise ValueError(f"suite {source}: unknown keys {unknown}")
    protocol = dict(data.get("protocol") or {})
    bad = sorted(set(protocol) - set(_PROTOCOL_KEYS))
    if bad:
        raise ValueError(f"suite {source}: unknown protocol keys {bad}; allowed: {', '.join(_PROTOCOL_KEYS)}")
    tasks = []
    for i, row in enumerate(data.get("tasks") or []):
        if not isinstance(row, dict):
            raise ValueError(f"suite {source}: task #{i} must be a mapping")
        extra = sorted(set(row) - set(_TASK_KEYS))
        if extra:
            close = [difflib.get_close_matches(k, _TASK_KEYS, n=1) for k in extra]
            hints = ", ".join(f"{k!r}" + (f" (did you mean {c[0]!r}?)" if c else "") for k, c in zip(extra, close))
            raise ValueError(f"suite {source}: task #{i} has unknown keys {hints}; allowed: {', '.join(_TASK_KEYS)}")
        merged = {**protocol, **row}
        merged.setdefault("task", merged.get("name"))
        merged.setdefault("label", merged.get("name"))
        merged["datasets"] = tuple(merged.get("datasets") or ())
        missing = [k for k in ("name", "max_new_tokens", "steps", "num_fewshot", "metric") if k not in merged]
        if missing:
            raise ValueError(f"suite {source}: task #{i} lacks {', '.join(missing)}")
        tasks.append(SuiteTask(**merged))
    return Suite(
        name=str(data.get("name") or Path(source).stem),
        description=str(data.get("description") or ""),
        tasks=tuple(tasks),
        published={str(k): {str(t): float(s) for t, s in v.items()} for k, v in (data.get("published") or {}).items()},
        published_average={str(k): float(v) for k, v in (data.get("published_average") or {}).items()},
        source=source,
    )
