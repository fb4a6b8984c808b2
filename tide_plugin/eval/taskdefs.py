"""Task definitions for ``tide eval``: names checked before anything runs, groups
expanded into their subtasks, and datasets read from a local folder when one is
given (``--data-dir``).

Local data layout, in each dataset's own schema (one JSON object per line)::

    DATA_DIR/<dataset_path>/<dataset_name or "default">/<split>.jsonl
    e.g. DATA_DIR/openai/gsm8k/main/test.jsonl, DATA_DIR/SaylorTwift/bbh/navigate/test.jsonl

A task whose dataset has no such folder reads the hub dataset (or its local cache);
when that is not available the error names the task and the dataset.
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path
from typing import Any

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
OFFLINE_TASKS = ("humaneval_offline", "humaneval_offline_instruct", "tide_smoke")
PAPER_TASKS = ("mmlu_generative_dream", "hellaswag_gen", "mbpp_offline_instruct")
SHIPPED_TASKS = (*OFFLINE_TASKS, *PAPER_TASKS)
LIKELIHOOD_TYPES = ("loglikelihood", "loglikelihood_rolling", "multiple_choice")
GENERATIVE_VARIANTS = (
    "mmlu_generative_dream", "hellaswag_gen", "mmlu_generative", "arc_challenge_chat", "gsm8k_cot",
    "humaneval_offline_instruct",
)
_SPLIT_KEYS = ("test_split", "validation_split", "training_split", "fewshot_split")


class MissingDataError(FileNotFoundError):
    """A task's dataset is neither in ``--data-dir`` nor available from the hub or
    its cache; ``task`` and ``dataset`` (``path/name``) say which."""

    def __init__(self, message: str, task: str, dataset: str) -> None:
        super().__init__(message)
        self.task, self.dataset = task, dataset


class TaskCatalog:
    """lm-eval's task index plus this package's tasks (and ``include_paths``)."""

    def __init__(self, include_paths: list[str] | tuple[str, ...] = (), include_defaults: bool = True) -> None:
        self.manager = _task_manager((str(TASKS_DIR), *include_paths), include_defaults)
        self.include_defaults = include_defaults

    # ------------------------------------------------------------ names

    def check(self, names: list[str]) -> None:
        """Every name known, else one line with the closest names and the choices."""
        known = set(self.manager.all_tasks)
        for name in names:
            if name in known:
                continue
            close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else "did you mean none of them? "
            raise ValueError(
                f"unknown task {name!r}; {hint}available: the {len(known)} lm-eval tasks "
                f"(`tide eval --list-tasks`), among them this package's {', '.join(SHIPPED_TASKS)}"
            )

    def _entry(self, name: str) -> tuple[str, str | None]:
        """``(kind, yaml_path)`` across lm-eval's index layouts."""
        entry = self.manager.task_index[name]
        if isinstance(entry, dict):  # lm-eval <= 0.4.9
            return str(entry.get("type", "task")), entry.get("yaml_path")
        kind = getattr(entry.kind, "name", str(entry.kind)).lower()
        return kind, (str(entry.yaml_path) if entry.yaml_path else None)

    def leaves(self, name: str) -> list[str]:
        """The task itself, or every task a group (recursively) holds."""
        kind, yaml_path = self._entry(name)
        if "group" not in kind:
            return [name]
        members = _load_yaml(yaml_path, resolve=False).get("task") or []
        out: list[str] = []
        for m in members:
            child = m if isinstance(m, str) else (m.get("task") or m.get("group"))
            if not isinstance(child, str) or child not in self.manager.task_index:
                raise ValueError(f"group {name!r}: cannot expand member {m!r}")
            out.extend(self.leaves(child))
        return out

    def config(self, name: str) -> dict[str, Any]:
        """A task's full config (includes resolved, functions loaded)."""
        kind, yaml_path = self._entry(name)
        if yaml_path is None or "group" in kind:
            raise ValueError(f"task {name!r} has no YAML config to read")
        cfg = _load_yaml(yaml_path, resolve=True)
        for key in ("tag", "group", "task_list", "include"):
            cfg.pop(key, None)
        cfg["task"] = name
        return cfg

    def require_generative(self, name: str) -> None:
        for leaf in self.leaves(name):
            kind = self.config(leaf).get("output_type", "generate_until")
            if kind in LIKELIHOOD_TYPES:
                raise ValueError(
                    f"task {name!r} ({leaf}) is a {kind} task: it needs a left-to-right likelihood that a "
                    f"block-diffusion student does not give; use a generative variant, e.g. {', '.join(GENERATIVE_VARIANTS)}"
                )

    # ------------------------------------------------------------ data

    def specs(self, name: str, data_dir: str | Path | None) -> list[dict[str, Any]]:
        """Inline configs for every leaf task, reading local data where present."""
        return [with_local_data(self.config(leaf), data_dir) for leaf in self.leaves(name)]

    def build(self, name: str, data_dir: str | Path | None) -> list[Any]:
        """The leaf Task objects, data loaded; a missing dataset is one line naming it."""
        tasks = []
        for spec in self.specs(name, data_dir):
            try:
                built = self._load(spec)
            except Exception as exc:  # noqa: BLE001 - datasets/hub raise many kinds; re-raised when not about data
                if not _is_data_error(exc):
                    raise
                where = dataset_id(spec)
                raise MissingDataError(
                    f"task {name!r} ({spec['task']}) needs the dataset {where}, which is neither in --data-dir "
                    f"nor available from the hub or its cache ({type(exc).__name__}); with a network (--online) "
                    f"it is downloaded, offline put its splits in DATA_DIR/{where}/<split>.jsonl",
                    task=name, dataset=where,
                ) from None
            tasks.extend(built.values())
        return tasks


    def _load(self, spec: dict[str, Any]) -> dict[str, Any]:
        if hasattr(self.manager, "load"):  # lm-eval >= 0.4.10
            return dict(self.manager.load([spec])["tasks"])
        from lm_eval.tasks import get_task_dict

        return dict(get_task_dict([spec], self.manager))


@functools.lru_cache(maxsize=4)
def _task_manager(include_paths: tuple[str, ...], include_defaults: bool) -> Any:
    """lm-eval's task index, built once per process (indexing its ~15 000 tasks takes seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include_paths), include_defaults=include_defaults)


def dataset_id(cfg: dict[str, Any]) -> str:
    return f"{cfg.get('dataset_path')}/{cfg.get('dataset_name') or 'default'}"


def with_local_data(cfg: dict[str, Any], data_dir: str | Path | None) -> dict[str, Any]:
    """``cfg`` reading ``DATA_DIR/<path>/<name>/<split>.jsonl`` when that folder exists."""
    if data_dir is None or not cfg.get("dataset_path") or cfg.get("custom_dataset"):
        return cfg
    folder = Path(data_dir) / str(cfg["dataset_path"]) / str(cfg.get("dataset_name") or "default")
    if not folder.is_dir():
        return cfg
    splits = {cfg[k] for k in _SPLIT_KEYS if cfg.get(k)}
    files = {s: str(folder / f"{s}.jsonl") for s in splits if (folder / f"{s}.jsonl").is_file()}
    needed = cfg.get("test_split") or cfg.get("validation_split")
    if needed not in files:
        raise FileNotFoundError(
            f"task {cfg['task']!r}: {folder} has no {needed}.jsonl (the split the task scores); found: "
            f"{', '.join(sorted(p.name for p in folder.glob('*.jsonl'))) or 'nothing'}"
        )
    out = dict(cfg)
    out["dataset_path"], out["dataset_name"] = "json", None
    out["dataset_kwargs"] = {**(cfg.get("dataset_kwargs") or {}), "data_files": files}
    out["dataset_kwargs"].pop("trust_remote_code", None)
    for key in _SPLIT_KEYS:  # a split the folder lacks (e.g. train for shots) is not asked for
        if cfg.get(key) and cfg[key] not in files and key != "test_split":
            out[key] = None
    return out


def _load_yaml(path: str | None, resolve: bool) -> dict[str, Any]:
    try:
        from lm_eval.tasks._yaml_loader import load_yaml
    except ImportError:  # lm-eval <= 0.4.9
        from lm_eval.utils import load_yaml_config

        return dict(load_yaml_config(path, mode="full" if resolve else "simple"))
    return dict(load_yaml(path, resolve_func=resolve))


def _is_data_error(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    if module.split(".")[0] in ("datasets", "huggingface_hub", "requests", "urllib3", "httpx", "fsspec"):
        return True
    return isinstance(exc, (ConnectionError, FileNotFoundError, TimeoutError))
