"""``tide preprocess``: chat JSONL -> aligned ``datasets`` dataset on disk.

Each input line is ``{"messages": [{"role": ..., "content": ...}, ...]}``. Both
tokenizers render the conversation with their chat templates and the aligner of
the pipeline produces one row per conversation (the keys of
:mod:`tide_plugin.batch`, read by ``distill_pad``):

- ``cross`` (different tokenizers, docs/method.md#chunks): :func:`~tide_plugin.alignment.chunk_alignment`
  -> ``input_ids, labels, teacher_input_ids, student_chunk_ids, teacher_chunk_ids, num_chunks``;
- ``shared`` (shared vocabulary, different templates, docs/method.md#template-alignment):
  :func:`~tide_plugin.alignment.template_pairs`
  -> ``input_ids, labels, teacher_input_ids, align_student, align_teacher``.

Targets (docs/method.md#targets): by default the last assistant turn with its end-of-turn
token and the template's newline after it, as the reference prepares them;
``targets="every_assistant_turn"`` (``--targets``) trains on every answer (ours).

Nothing is dropped silently: conversations whose prompt fills ``max_length``,
conversations a chat template cannot render (a ``tool`` role, say) and
conversations the aligner rejects are counted in the :class:`PreprocessReport`
(with the first few reasons), as are chunks dropped by truncation and pairs
dropped because their ids differ. Only ``role`` and ``content`` of each message
are read; a message whose role or content is not a string stops the run with one
line naming the file, the line and the field. The saved folder records the
tokenizers it was aligned with (:mod:`tide_plugin.alignment.metadata`), and an
existing dataset is replaced only with ``--overwrite_output_dir``. A ``cross`` folder
also holds the tokenizer pair's vocabulary projection ``W`` (``projection.safetensors``,
:mod:`tide_plugin.alignment.projection_build`), with its coverage in the report.

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

from ..jsonio import describe_error
from ..pipelines import ALIGNED_PIPELINES, get_pipeline
from .checks import TARGETS, check_targets
from .mapper import STATUS, Aligner, features, summarise
from .metadata import REPORT_FILE, check_output_dir, tokenizer_record
from .projection import PROJECTION_FILE
from .report import PreprocessReport

__all__ = ["DEMO_DATA", "REPORT_FILE", "PreprocessReport", "check_row", "load_jsonl", "load_tokenizer", "preprocess"]

PIPELINES = (*ALIGNED_PIPELINES, "same")
"""What ``tide preprocess`` writes: aligned rows (``cross``, ``shared``) or the student's own (``same``)."""
DEFAULT_MAX_LENGTH = 512
DEMO_DATA = Path(__file__).resolve().parent.parent / "data" / "chat_demo.jsonl"


# -- inputs -----------------------------------------------------------------------
def check_row(row: Any, where: str) -> dict[str, Any]:
    """One chat row reduced to ``{"messages": [{"role", "content"}, ...]}``; ``where``
    names it in the one-line error (``file:line`` or ``row i``)."""
    if not isinstance(row, Mapping) or not isinstance(row.get("messages"), list):
        raise ValueError(f"{where}: expected an object with a 'messages' list, got {json.dumps(row, default=str)[:120]}")
    messages = []
    for k, m in enumerate(row["messages"]):
        if not isinstance(m, Mapping):
            raise ValueError(f"{where}: messages[{k}] must be an object with 'role' and 'content', got {type(m).__name__}")
        for name in ("role", "content"):
            value = m.get(name)
            if not isinstance(value, str):
                shown = "missing" if name not in m else f"{type(value).__name__} {json.dumps(value, default=str)[:60]}"
                raise ValueError(f"{where}: messages[{k}].{name} must be a string, got {shown}")
        messages.append({"role": m["role"], "content": m["content"]})
    return {"messages": messages}


def load_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read chat rows; every line must be a JSON object with a ``messages`` list of
    ``{"role": str, "content": str}`` (other message keys are not read)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {describe_error(exc)}") from exc
            rows.append(check_row(row, f"{path}:{lineno}"))
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
    targets: str = "last_turn",
) -> tuple[Any, PreprocessReport]:
    """Align chat rows into a ``datasets.Dataset`` for ``pipeline``.

    :param rows: dicts with a ``messages`` list, or a ``datasets.Dataset`` with a
        ``messages`` column.
    :param pipeline: ``cross`` (chunks), ``shared`` (template pairs) or ``same`` (one
        tokenizer and template: the student's ids and labels; ``teacher_tokenizer`` must
        be the student's).
    :param max_length: student length cap (``None``: none).
    :param teacher_max_length: teacher cap; ``-1`` (default) takes docs/method.md#recipes's value for
        the pipeline (1024 cross, 768 shared), ``None`` means no cap.
    :param roles: roles whose content is aligned (default: every message).
    :param num_proc: worker processes for ``datasets.map`` (``None``/1: in process).
    :param progress: show the ``datasets`` progress bar.
    :param targets: ``last_turn`` (the reference) or ``every_assistant_turn`` (ours), docs/method.md#targets.
    :return: ``(dataset, report)``: the kept rows (columns of :mod:`tide_plugin.batch`)
        and a :class:`PreprocessReport`.
    """
    import datasets

    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline {pipeline!r} is not one of {PIPELINES}")
    check_targets(targets)
    if pipeline == "same" and teacher_tokenizer is not student_tokenizer:
        from .metadata import tokenizer_fingerprint

        if tokenizer_fingerprint(teacher_tokenizer) != tokenizer_fingerprint(student_tokenizer):
            raise ValueError("the same pipeline has one tokenizer, but the teacher's differs from the student's; "
                             "use the shared pipeline (one vocabulary, two templates) or the cross pipeline")
    if teacher_max_length == -1:
        teacher_max_length = get_pipeline(pipeline).default_teacher_max_length
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
        source = datasets.Dataset.from_list([check_row(r, f"row {i}") for i, r in enumerate(rows)])
    if len(source) == 0:
        raise ValueError("preprocess: no rows")
    aligner = Aligner(pipeline, teacher_tokenizer, student_tokenizer, roles, max_length, teacher_max_length, targets)
    was_enabled = datasets.utils.logging.is_progress_bar_enabled()
    (datasets.enable_progress_bars if progress else datasets.disable_progress_bars)()
    try:
        mapped = source.map(
            aligner,
            batched=True,
            batch_size=32,
            num_proc=num_proc if num_proc and num_proc > 1 else None,
            remove_columns=source.column_names,
            features=features(pipeline),
            desc=f"aligning ({pipeline})",
            load_from_cache_file=False,
            # datasets would otherwise hash the function, i.e. dill-dump both tokenizers (seconds)
            new_fingerprint=uuid.uuid4().hex,
        )
    finally:
        (datasets.enable_progress_bars if was_enabled else datasets.disable_progress_bars)()
    report = summarise(mapped, pipeline)
    kept_idx = [i for i, s in enumerate(mapped[STATUS]) if s == "ok"]
    private = [c for c in mapped.column_names if c.startswith("_")]
    dataset = mapped.select(kept_idx).remove_columns(private)
    return dataset, report


# -- command line ---------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", default=str(DEMO_DATA), help="chat JSONL (default: the shipped demo conversations)")
    parser.add_argument("--output", required=True, help="directory for the saved dataset (datasets.save_to_disk)")
    parser.add_argument(
        "--pipeline", choices=PIPELINES, default="cross",
        help="cross: chunks; shared: template pairs; same: one tokenizer and template (the teacher reads the student's)",
    )
    parser.add_argument("--student", default="offline:qwen", help="student tokenizer: offline:<name> or a local directory")
    parser.add_argument(
        "--teacher",
        default=None,
        help="teacher tokenizer: offline:<name> or a local directory (default: offline:mistral for cross, "
        "offline:qwen for shared, the student's for same)",
    )
    parser.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="student token cap (0: none)")
    parser.add_argument(
        "--teacher-max-length", type=int, default=-1, help="teacher token cap (default 1024 cross / 768 shared; 0: none)"
    )
    parser.add_argument("--roles", default=None, help="comma-separated roles to align (default: every message)")
    parser.add_argument(
        "--targets",
        choices=TARGETS,
        default="last_turn",
        help="last_turn: the last assistant turn with its end-of-turn token and newline (the reference); "
        "every_assistant_turn: every answer (ours)",
    )
    parser.add_argument(
        "--overwrite_output_dir",
        "--overwrite-output-dir",
        action="store_true",
        help="replace a dataset already saved in --output (refused otherwise)",
    )
    parser.add_argument("--num-proc", type=int, default=1, help="worker processes for datasets.map")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    teacher_spec = args.teacher or {"cross": "offline:mistral", "shared": "offline:qwen"}.get(args.pipeline, args.student)
    out = Path(args.output)
    try:
        check_output_dir(out, args.overwrite_output_dir)  # refuse before any work
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
            targets=args.targets,
        )
        check_output_dir(out, args.overwrite_output_dir, replace=True)  # only now is an old dataset removed
    except (ValueError, OSError, KeyError) as exc:
        print(f"tide preprocess: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
              file=sys.stderr)
        return 2
    dataset.save_to_disk(str(out))
    projection = None
    if args.pipeline == "cross":  # W, for the full-distribution objectives (docs/method.md#projected-kl)
        from .projection_build import build_projection, format_projection_report, projection_report

        w = build_projection(teacher, student)
        w.save(out)
        projection = {"file": PROJECTION_FILE, **projection_report(w, teacher, student)}
    meta = {
        "input": str(args.input),
        "student": args.student,
        "teacher": teacher_spec,
        "max_length": args.max_length,
        "teacher_max_length": args.teacher_max_length,
        "roles": args.roles,
        "targets": args.targets,
        "tokenizers": {"student": tokenizer_record(student, args.student), "teacher": tokenizer_record(teacher, teacher_spec)},
        "report": report.to_dict(),
        **({"projection": projection} if projection else {}),
    }
    (out / REPORT_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(report.format())
    if projection:
        print(f"  {format_projection_report(projection)}; saved as {out / PROJECTION_FILE}")
    print(f"  saved {len(dataset)} rows to {out} (report: {out / REPORT_FILE})")
    return 0
