"""The training rows of a ``tide distill`` run: a ``tide preprocess`` folder (checked
against the run's pipeline and tokenizers) or a chat JSONL aligned in process, with
the reference's data arguments (``--dataset_args``, ``--load_preprocessed_data``,
``--mask_prompt_loss``, ``--truncation``, ``--num_proc``, ``--disable_caching``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..batch import ROW_LABELS, ROW_STUDENT_IDS
from .distill_checks import check_dataset_pipeline, check_dataset_tokenizers, preprocess_module


def check_data_path(run: Mapping[str, Any]) -> None:
    """Before any heavy work: the data path exists and is of the kind asked for."""
    data = run.get("data")
    if not data:
        if run.get("load_preprocessed_data"):
            raise ValueError("--load_preprocessed_data True needs --dataset_args (or --data): a `tide preprocess` folder")
        return
    path = Path(str(data)).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"dataset {str(data)!r} is neither a chat JSONL file nor a `tide preprocess` folder "
            "(data is read from local paths only)"
        )
    if run.get("load_preprocessed_data") and not path.is_dir():
        raise ValueError(
            f"--load_preprocessed_data True, but {str(data)!r} is a file; pass the `tide preprocess` output folder, "
            "or --load_preprocessed_data False to align this chat JSONL now"
        )


def load_run_dataset(
    run: Mapping[str, Any],
    config: Any,
    tokenizers: Mapping[str, tuple[Any, str]],
) -> tuple[Any, list[str]]:
    """``(dataset, notes)``; ``tokenizers`` is ``{"student": (tok, name), "teacher": (tok, name)}``."""
    import datasets

    notes: list[str] = []
    if run.get("disable_caching"):
        datasets.disable_caching()
    data = run.get("data")
    if data and Path(str(data)).is_dir():
        ds = datasets.load_from_disk(str(data))
        check_dataset_pipeline(ds, config.pipeline, str(data))
        notes += check_dataset_tokenizers(data, tokenizers)
        if run.get("load_preprocessed_data") is False:
            notes.append(f"--load_preprocessed_data False, but {str(data)!r} is a `tide preprocess` folder: used as it is")
        for key in ("mask_prompt_loss", "truncation", "num_proc"):
            if run.get(key) is not None:
                notes.append(f"--{key} has no effect on a preprocessed dataset (it applies when raw data is aligned)")
        if run.get("max_samples") and len(ds) > int(run["max_samples"]):
            ds = ds.select(range(int(run["max_samples"])))
        return ds, notes
    pre = preprocess_module()
    rows = pre.load_jsonl(data or pre.DEMO_DATA)
    if run.get("max_samples"):
        rows = rows[: int(run["max_samples"])]
    filtering = run.get("truncation") == "filter" and config.max_length is not None
    ds, report = pre.preprocess(
        rows,
        tokenizers["teacher"][0],
        tokenizers["student"][0],
        pipeline=config.pipeline,
        max_length=None if filtering else config.max_length,
        teacher_max_length=config.teacher_max_length or -1,
        num_proc=run.get("num_proc"),
        progress=False,
    )
    kept = len(ds)
    reasons = []
    if report.discarded_prompt_too_long:
        reasons.append(f"{report.discarded_prompt_too_long} whose prompt fills max_length {config.max_length}")
    if report.discarded_invalid:
        reasons.append(f"{report.discarded_invalid} that could not be aligned")
    if filtering:
        ds = ds.filter(lambda r: len(r[ROW_STUDENT_IDS]) <= int(config.max_length))
        if kept - len(ds):
            reasons.append(f"{kept - len(ds)} longer than max_length {config.max_length} (--truncation filter)")
    why = f"; dropped {', '.join(reasons)}" if reasons else ""
    if not filtering and report.truncated_examples:
        why += f"; {report.truncated_examples} cut at max_length {config.max_length}"
    notes.append(f"aligned {len(ds)} of {len(rows)} conversations ({config.pipeline} pipeline){why}")
    if len(ds) == 0:
        raise ValueError(f"no conversation survived alignment ({', '.join(reasons) or 'none aligned'})")
    if run.get("mask_prompt_loss") is False:  # the reference's option: prompt tokens become targets too
        ds = ds.map(lambda r: {ROW_LABELS: list(r[ROW_STUDENT_IDS])}, desc=None)
    return ds, notes
