"""``tide preprocess``: chat JSONL -> aligned ``datasets`` dataset on disk.

Each input line is ``{"messages": [{"role": ..., "content": ...}, ...]}``. Both
tokenizers render the conversation with their chat templates and the aligner of
the pipeline produces one row per conversation (the keys of
:mod:`tide_plugin.batch`, read by ``distill_pad``):

- ``cross`` (different tokenizers, SPEC 3.3): :func:`~tide_plugin.alignment.chunk_alignment`
  -> ``input_ids, labels, teacher_input_ids, student_chunk_ids, teacher_chunk_ids, num_chunks``;
- ``shared`` (shared vocabulary, different templates, SPEC 3.2):
  :func:`~tide_plugin.alignment.template_pairs`
  -> ``input_ids, labels, teacher_input_ids, align_student, align_teacher``.

Nothing is dropped silently: conversations whose prompt fills ``max_length``
and conversations the aligner rejects are counted in the :class:`PreprocessReport`
(with the first few reasons), as are chunks dropped by truncation and pairs
dropped because their ids differ.

Command line::

    tide preprocess --output runs/data-cross --pipeline cross \\
        --student offline:qwen --teacher offline:mistral --max-length 512 --num-proc 2

Python (the trainer calls this in-process)::

    dataset, report = preprocess(rows, teacher_tok, student_tok, pipeline="cross", max_length=512)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..batch import (
    ROW_LABELS,
    ROW_NUM_CHUNKS,
    ROW_PAIR_STUDENT,
    ROW_PAIR_TEACHER,
    ROW_STUDENT_CHUNKS,
    ROW_STUDENT_IDS,
    ROW_TEACHER_CHUNKS,
    ROW_TEACHER_IDS,
)
from .report import _CROSS_STATS, _SHARED_STATS, PreprocessReport

PIPELINES = ("cross", "shared")
DEFAULT_MAX_LENGTH = 512
DEFAULT_TEACHER_MAX_LENGTH = {"cross": 1024, "shared": 768}  # SPEC 6: teacher length A / B
DEMO_DATA = Path(__file__).resolve().parent.parent / "data" / "chat_demo.jsonl"
REPORT_FILE = "tide_preprocess_report.json"
_MAX_REASONS = 5
_STAT_PREFIX = "_stat_"
_STATUS = "_status"
_ERROR = "_error"

# stats of the aligners summed into the report (missing keys count 0)

# -- inputs -----------------------------------------------------------------------
def load_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read chat rows; every line must be a JSON object with a ``messages`` list."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
                raise ValueError(f"{path}:{lineno}: expected an object with a 'messages' list, got {line.strip()[:120]!r}")
            rows.append({"messages": row["messages"]})
    if not rows:
        raise ValueError(f"{path}: no conversations")
    return rows


def load_tokenizer(spec: str) -> Any:
    """``offline:<name>`` (:func:`tide_plugin.offline.tokenizer`) or a local directory
    readable by ``AutoTokenizer.from_pretrained`` (never a hub name)."""
    if spec.startswith("offline:"):
        from .. import offline

        return offline.tokenizer(spec.split(":", 1)[1])
    if not Path(spec).is_dir():
        raise ValueError(
            f"tokenizer {spec!r} is neither 'offline:<name>' (offline tokenizers: qwen, mistral) nor a local "
            "directory; download a tokenizer yourself and pass its folder"
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec, local_files_only=True)


# -- alignment of one batch of rows (runs in datasets.map workers) -----------------
class _Aligner:
    """Picklable ``datasets.map`` function (batched)."""

    def __init__(self, pipeline, teacher_tokenizer, student_tokenizer, roles, max_length, teacher_max_length):
        self.pipeline = pipeline
        self.teacher_tokenizer = teacher_tokenizer
        self.student_tokenizer = student_tokenizer
        self.roles = roles
        self.max_length = max_length
        self.teacher_max_length = teacher_max_length
        self.stat_names = _CROSS_STATS if pipeline == "cross" else _SHARED_STATS

    def __call__(self, batch: Mapping[str, list]) -> dict[str, list]:
        from .aligners import AlignmentError, PromptTooLongError, chunk_alignment, template_pairs

        align = chunk_alignment if self.pipeline == "cross" else template_pairs
        keys = [ROW_STUDENT_IDS, ROW_LABELS, ROW_TEACHER_IDS]
        keys += [ROW_STUDENT_CHUNKS, ROW_TEACHER_CHUNKS, ROW_NUM_CHUNKS] if self.pipeline == "cross" else [
            ROW_PAIR_STUDENT,
            ROW_PAIR_TEACHER,
        ]
        out: dict[str, list] = {k: [] for k in keys}
        out[_STATUS], out[_ERROR] = [], []
        for name in self.stat_names:
            out[_STAT_PREFIX + name] = []
        for messages in batch["messages"]:
            status, error, row, stats = "ok", "", None, {}
            try:
                ex = align(
                    self.teacher_tokenizer,
                    self.student_tokenizer,
                    messages,
                    roles=self.roles,
                    max_length=self.max_length,
                    teacher_max_length=self.teacher_max_length,
                )
                row, stats = ex.to_row(), ex.stats
            except PromptTooLongError as exc:
                status, error = "prompt_too_long", str(exc)
            except AlignmentError as exc:
                status, error = "invalid", str(exc)
            for k in keys:
                out[k].append(row[k] if row is not None else (0 if k == ROW_NUM_CHUNKS else []))
            out[_STATUS].append(status)
            out[_ERROR].append(error)
            for name in self.stat_names:
                out[_STAT_PREFIX + name].append(float(stats.get(name, 0.0)))
        return out


def _features(pipeline: str) -> Any:
    from datasets import Features, Sequence as Seq, Value

    ids = Seq(Value("int32"))
    feats = {ROW_STUDENT_IDS: ids, ROW_LABELS: ids, ROW_TEACHER_IDS: ids}
    if pipeline == "cross":
        feats.update({ROW_STUDENT_CHUNKS: ids, ROW_TEACHER_CHUNKS: ids, ROW_NUM_CHUNKS: Value("int32")})
    else:
        feats.update({ROW_PAIR_STUDENT: ids, ROW_PAIR_TEACHER: ids})
    feats[_STATUS] = Value("string")
    feats[_ERROR] = Value("string")
    for name in _CROSS_STATS if pipeline == "cross" else _SHARED_STATS:
        feats[_STAT_PREFIX + name] = Value("float64")
    return Features(feats)


def preprocess(
    rows: Iterable[Mapping[str, Any]] | Any,
    teacher_tokenizer: Any,
    student_tokenizer: Any,
    *,
    pipeline: str = "cross",
    max_length: int | None = DEFAULT_MAX_LENGTH,
    teacher_max_length: int | None = -1,
    roles: Sequence[str] | None = None,
    num_proc: int | None = None,
    progress: bool = True,
) -> tuple[Any, PreprocessReport]:
    """Align chat rows into a ``datasets.Dataset`` for ``pipeline``.

    :param rows: dicts with a ``messages`` list, or a ``datasets.Dataset`` with a
        ``messages`` column.
    :param pipeline: ``cross`` (chunks) or ``shared`` (template pairs).
    :param max_length: student length cap (``None``: none).
    :param teacher_max_length: teacher cap; ``-1`` (default) takes SPEC 6's value for
        the pipeline (1024 cross, 768 shared), ``None`` means no cap.
    :param roles: roles whose content is aligned (default: every message).
    :param num_proc: worker processes for ``datasets.map`` (``None``/1: in process).
    :param progress: show the ``datasets`` progress bar.
    :return: ``(dataset, report)``: the kept rows (columns of :mod:`tide_plugin.batch`)
        and a :class:`PreprocessReport`.
    """
    import datasets

    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline {pipeline!r} is not one of {PIPELINES} (the 'same' pipeline needs no alignment)")
    if teacher_max_length == -1:
        teacher_max_length = DEFAULT_TEACHER_MAX_LENGTH[pipeline]
    for name, value in (("max_length", max_length), ("teacher_max_length", teacher_max_length)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    if num_proc is not None and (not isinstance(num_proc, int) or num_proc < 1):
        raise ValueError(f"num_proc must be a positive int or None, got {num_proc!r}")
    if isinstance(roles, str):
        roles = [r.strip() for r in roles.split(",") if r.strip()]
    if isinstance(rows, datasets.Dataset):
        source = rows.select_columns(["messages"])
    else:
        source = datasets.Dataset.from_list([{"messages": list(r["messages"])} for r in rows])
    if len(source) == 0:
        raise ValueError("preprocess: no rows")
    aligner = _Aligner(pipeline, teacher_tokenizer, student_tokenizer, roles, max_length, teacher_max_length)
    was_enabled = datasets.utils.logging.is_progress_bar_enabled()
    (datasets.enable_progress_bars if progress else datasets.disable_progress_bars)()
    try:
        mapped = source.map(
            aligner,
            batched=True,
            batch_size=32,
            num_proc=num_proc if num_proc and num_proc > 1 else None,
            remove_columns=source.column_names,
            features=_features(pipeline),
            desc=f"aligning ({pipeline})",
            load_from_cache_file=False,
            # datasets would otherwise hash the function, i.e. dill-dump both tokenizers (seconds)
            new_fingerprint=uuid.uuid4().hex,
        )
    finally:
        (datasets.enable_progress_bars if was_enabled else datasets.disable_progress_bars)()
    report = _report(mapped, pipeline)
    kept_idx = [i for i, s in enumerate(mapped[_STATUS]) if s == "ok"]
    private = [c for c in mapped.column_names if c.startswith("_")]
    dataset = mapped.select(kept_idx).remove_columns(private)
    return dataset, report


def _report(mapped: Any, pipeline: str) -> PreprocessReport:
    status = mapped[_STATUS]
    ok = [s == "ok" for s in status]
    rep = PreprocessReport(pipeline=pipeline, rows_in=len(status), rows_kept=sum(ok))
    rep.discarded_prompt_too_long = status.count("prompt_too_long")
    rep.discarded_invalid = status.count("invalid")
    rep.reasons = [e for s, e in zip(status, mapped[_ERROR]) if s != "ok"][:_MAX_REASONS]
    for c in mapped.column_names:
        if c.startswith(_STAT_PREFIX):
            rep.totals[c[len(_STAT_PREFIX) :]] = float(sum(v for v, k in zip(mapped[c], ok) if k))
    ids = mapped[ROW_STUDENT_IDS]
    rep.student_tokens = sum(len(x) for x in ids)
    rep.teacher_tokens = sum(len(x) for x in mapped[ROW_TEACHER_IDS])
    rep.target_tokens = sum(sum(1 for v in lab if v != -100) for lab in mapped[ROW_LABELS])
    rep.truncated_examples = sum(1 for v, k in zip(mapped[_STAT_PREFIX + "student_truncated_tokens"], ok) if k and v > 0)
    return rep


# -- command line ---------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", default=str(DEMO_DATA), help="chat JSONL (default: the shipped demo conversations)")
    parser.add_argument("--output", required=True, help="directory for the saved dataset (datasets.save_to_disk)")
    parser.add_argument("--pipeline", choices=PIPELINES, default="cross", help="cross: chunks; shared: template pairs")
    parser.add_argument("--student", default="offline:qwen", help="student tokenizer: offline:<name> or a local directory")
    parser.add_argument(
        "--teacher",
        default=None,
        help="teacher tokenizer: offline:<name> or a local directory (default: offline:mistral for cross, "
        "offline:qwen for shared)",
    )
    parser.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="student token cap (0: none)")
    parser.add_argument(
        "--teacher-max-length", type=int, default=-1, help="teacher token cap (default 1024 cross / 768 shared; 0: none)"
    )
    parser.add_argument("--roles", default=None, help="comma-separated roles to align (default: every message)")
    parser.add_argument("--num-proc", type=int, default=1, help="worker processes for datasets.map")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    teacher_spec = args.teacher or ("offline:mistral" if args.pipeline == "cross" else "offline:qwen")
    try:
        rows = load_jsonl(args.input)
        student = load_tokenizer(args.student)
        teacher = load_tokenizer(teacher_spec)
        dataset, report = preprocess(
            rows,
            teacher,
            student,
            pipeline=args.pipeline,
            max_length=args.max_length or None,
            teacher_max_length=None if args.teacher_max_length == 0 else args.teacher_max_length,
            roles=args.roles,
            num_proc=args.num_proc,
            progress=not args.no_progress,
        )
    except (ValueError, OSError, KeyError) as exc:
        print(f"tide preprocess: {exc}", file=sys.stderr)
        return 2
    out = Path(args.output)
    dataset.save_to_disk(str(out))
    meta = {
        "input": str(args.input),
        "student": args.student,
        "teacher": teacher_spec,
        "max_length": args.max_length,
        "teacher_max_length": args.teacher_max_length,
        "roles": args.roles,
        "report": report.to_dict(),
    }
    (out / REPORT_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(report.format())
    print(f"  saved {len(dataset)} rows to {out} (report: {out / REPORT_FILE})")
    return 0
