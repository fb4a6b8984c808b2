"""What ``tide distill`` checks before any heavy work, so a run never loses work or
trains the wrong thing in silence: the output folder, the checkpoint to resume, the
dataset's pipeline and the tokenizers it was aligned with."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import jsonio
from ..alignment import dataset_tokenizers, tokenizer_fingerprint

FINISHED_RUN_FILES = ("tide_config.json", "metrics.json", "config.json")
"""A folder holding one of these holds a finished run (a saved student or its report)."""


def check_output_dir(output_dir: str, *, overwrite: bool, resume: bool) -> None:
    """Refuse an ``output_dir`` that holds a finished run or checkpoints, unless
    ``--overwrite_output_dir`` (the transformers convention) or a resume is asked for."""
    out = Path(output_dir)
    if overwrite or resume or not out.is_dir():
        return
    finished = [name for name in FINISHED_RUN_FILES if (out / name).exists()]
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*") if p.is_dir())
    if not finished and not checkpoints:
        return
    what = f"a finished run ({', '.join(finished)})" if finished else f"checkpoints ({', '.join(checkpoints)})"
    raise ValueError(
        f"output_dir {str(out)!r} already holds {what}; pass --overwrite_output_dir True to replace it, "
        "--resume_from_checkpoint True to continue it, or another --output_dir"
    )


def pipeline_mismatch(objective: str, needs: str, preset: str, runs: str) -> str:
    """The line for an objective of another pipeline than the chosen preset's, naming an
    alias of the same objective that reads the preset's pipeline where one exists
    (``kl`` on ``shared``: ``kl_aligned``)."""
    from ..registry import get_registry
    from ..training.config import implied_pipeline

    hint = ""
    if "+" not in objective:
        info = get_registry().resolve("objective", objective)
        fits = [a for a in (info.name, *info.spec.aliases) if a != objective and implied_pipeline(a) == runs]
        if fits:
            hint = f"; {fits[0]!r} is {objective!r} on the {runs!r} pipeline"
    return (f"objective {objective!r} needs the {needs!r} pipeline, but --preset {preset} runs the {runs!r} pipeline"
            f"{hint}; choose another preset (or --preset none), or an objective of the {runs!r} pipeline")


def resolve_resume(value: Any, output_dir: str) -> str | None:
    """``--resume_from_checkpoint``: ``True`` means the last ``checkpoint-*`` of
    ``output_dir`` (as the transformers scripts read it); a path must be a folder."""
    if value is None or value is False or str(value).strip().lower() in ("", "false", "none", "no", "0"):
        return None
    if value is True or str(value).strip().lower() in ("true", "yes", "1"):
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
        if last is None:
            raise ValueError(
                f"--resume_from_checkpoint True: output_dir {output_dir!r} holds no checkpoint-* folder to resume from"
            )
        return last
    if not Path(str(value)).is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {str(value)!r} is not a checkpoint folder")
    return str(value)


def check_dataset_pipeline(dataset: Any, pipeline: str | None, source: str) -> None:
    """A preprocessed dataset carries the columns of the pipeline it was aligned for;
    a run of another pipeline stops here with one line (not in the collator)."""
    from ..collators.pad import infer_pipeline

    if len(dataset) == 0:
        raise ValueError(f"dataset {source!r} has no rows")
    have = infer_pipeline(dataset[0])
    if pipeline in ("cross", "shared") and have != pipeline:
        raise ValueError(
            f"dataset {source!r} was preprocessed for the {have!r} pipeline, but this run uses the {pipeline!r} "
            f"pipeline; preprocess it again with --pipeline {pipeline}, or choose an objective of the {have!r} pipeline"
        )


# -- which tokenizers a dataset was aligned with --------------------------------------------
def preprocess_module() -> Any:
    """:mod:`tide_plugin.alignment.preprocess` (imported when a dataset is needed)."""
    import importlib

    return importlib.import_module("tide_plugin.alignment.preprocess")


def recorded_tokenizers(folder: str | Path) -> dict[str, dict[str, Any]]:
    """``{"student": {"name", "fingerprint"}, "teacher": {...}}`` as far as the dataset
    folder records them (``tide preprocess`` writes its report next to the data)."""
    found = dataset_tokenizers(folder)
    if found:
        return {side: dict(info) for side, info in found.items()}
    path = Path(folder)  # a dataset made before fingerprints were recorded: its report names the specs / preprocess_module().REPORT_FILE
    if not path.is_file():
        return {}
    meta = jsonio.read(path)
    out: dict[str, dict[str, Any]] = {}
    for side in ("student", "teacher"):
        info = (meta.get("tokenizers") or {}).get(side)
        if isinstance(info, Mapping):
            out[side] = dict(info)
        elif isinstance(meta.get(side), str):
            out[side] = {"name": meta[side]}
    return out


def _fingerprint_of_spec(spec: str) -> str | None:
    """The fingerprint of a recorded tokenizer spec that loads offline (``offline:`` names,
    local folders); ``None`` when it cannot be loaded here."""
    load_tokenizer = preprocess_module().load_tokenizer
    if not (spec.startswith("offline:") or Path(spec).is_dir()):
        return None
    try:
        return tokenizer_fingerprint(load_tokenizer(spec))
    except (OSError, ValueError):
        return None


def check_dataset_tokenizers(folder: str | Path, tokenizers: Mapping[str, tuple[Any, str]]) -> list[str]:
    """Stop when the dataset was aligned with other tokenizers than the run's.

    :param tokenizers: ``{"student": (tokenizer, name), "teacher": (tokenizer, name)}``.
    :return: notes for what could not be checked (nothing recorded).
    """
    recorded = recorded_tokenizers(folder)
    notes = []
    for side, (tok, name) in tokenizers.items():
        info = recorded.get(side)
        if not info:
            notes.append(f"dataset {str(folder)!r} records no {side} tokenizer; not checked against {name!r}")
            continue
        want = info.get("fingerprint") or _fingerprint_of_spec(str(info.get("name", "")))
        if want is None:
            notes.append(f"the dataset's {side} tokenizer {info.get('name')!r} cannot be loaded here; not checked")
            continue
        if want != tokenizer_fingerprint(tok):
            raise ValueError(
                f"dataset {str(folder)!r} was aligned with the {side} tokenizer {info.get('spec') or info.get('name')!r}, "
                f"but this run's "
                f"{side} tokenizer is {name!r} (another vocabulary); preprocess the data again with it, or run with "
                f"the dataset's tokenizer"
            )
    return notes
