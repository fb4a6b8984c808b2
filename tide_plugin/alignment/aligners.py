"""The two aligners (:func:`chunk_alignment`, :func:`template_pairs`): labels and truncation."""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

import numpy as np

from ..batch import AlignedExample
from ..pipelines import cut_chunks, cut_pairs
from .bytetable import ByteTable, byte_table
from .checks import IGNORE_INDEX, AlignmentError, PromptTooLongError, UnrenderableError, check_targets, require_fast
from .chunks import align_chunks
from .encode import SideBytes, SideEncoding, encode_side, side_bytes

CHUNK_STATS: tuple[str, ...] = (
    "chunks",
    "dropped_chunks",
    "dropped_chunks_student_cut",
    "dropped_chunks_teacher_cap",
    "content_bytes",
    "covered_bytes",
    "kept_bytes",
    "unmatched_messages",
    "normalised_differ_messages",
    "student_truncated_tokens",
    "teacher_truncated_tokens",
)
"""The ``stats`` keys :func:`chunk_alignment` reports for every example."""
PAIR_STATS: tuple[str, ...] = (
    "pairs",
    "dropped_pairs",
    "unpaired_tokens",
    "truncated_pairs",
    "unmatched_messages",
    "student_truncated_tokens",
    "teacher_truncated_tokens",
)
"""The ``stats`` keys :func:`template_pairs` reports for every example."""
SAME_STATS: tuple[str, ...] = ("student_truncated_tokens",)
"""The ``stats`` key :func:`same_tokens` reports for every example."""


# input checks of a conversation


def _check_messages(messages: Any) -> list[Mapping[str, Any]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise AlignmentError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    if len(messages) == 0:
        raise AlignmentError("empty conversation: messages must hold at least one {'role', 'content'} dict")
    for k, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise AlignmentError(
                f"message {k} must be a dict with str 'role' and str 'content', got {m!r:.200}"
            )
    return list(messages)


def _check_roles(messages: Sequence[Mapping[str, Any]], roles: Sequence[str] | None) -> list[bool]:
    present = [m["role"] for m in messages]
    if roles is None:
        return [True] * len(messages)
    if isinstance(roles, str):
        roles = (roles,)
    wanted = set(roles)
    if not wanted.intersection(present):
        raise AlignmentError(
            f"conversation has no message with a role in roles={sorted(wanted)}; roles present: {sorted(set(present))}"
        )
    return [r in wanted for r in present]


def _check_length(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


# labels and truncation shared by both aligners


def _labels(
    tok: Any, table: ByteTable, side: SideBytes, enc: SideEncoding, messages: Sequence[Mapping[str, Any]], targets: str
) -> np.ndarray:
    """Student labels by ``targets`` (:data:`~tide_plugin.alignment.checks.TARGETS`), ``-100`` elsewhere."""
    if targets == "last_turn":
        return np.where(np.arange(side.ids.size) >= _prompt_tokens(tok, enc, messages), side.ids, IGNORE_INDEX)
    return _assistant_labels(table, side, messages)


def _prompt_tokens(tok: Any, enc: SideEncoding, messages: Sequence[Mapping[str, Any]]) -> int:
    """How many leading student tokens are prompt under ``last_turn`` (docs/method.md#targets): the
    tokens of the earlier turns rendered with the generation prompt, as the reference
    counts them (the count of that rendering's own tokens)."""
    if messages[-1]["role"] != "assistant":
        raise AlignmentError(
            f"targets='last_turn' needs a conversation that ends with an 'assistant' message; the last role is "
            f"{messages[-1]['role']!r} (use targets='every_assistant_turn' to train on earlier answers)"
        )
    try:
        prompt = tok.apply_chat_template(list(messages[:-1]), tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # a template that cannot render the prompt alone (e.g. an empty one)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnrenderableError(f"the student's chat template cannot render the prompt turns: {reason}") from exc
    n = len(enc.ids)
    if enc.text.startswith(prompt):
        # fast path: the prompt ends on a token boundary of the whole rendering
        k = bisect.bisect_right(enc.offsets, len(prompt), key=itemgetter(1))
        if k == n or (k and enc.offsets[k - 1][1] == len(prompt) and enc.offsets[k][0] >= len(prompt)):
            return min(k, n)
    return min(len(tok.backend_tokenizer.encode(prompt, add_special_tokens=False).ids), n)


def _assistant_labels(table: ByteTable, side: SideBytes, messages: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """``every_assistant_turn``: ids on tokens overlapping assistant content and on the
    end-of-turn token right after it."""
    spans = [sp for m, sp in zip(messages, side.spans) if m["role"] == "assistant" and sp is not None]
    target = np.zeros(side.ids.shape, dtype=bool)
    if spans:
        a = np.asarray([s for s, _ in spans], dtype=np.int64)
        b = np.asarray([e for _, e in spans], dtype=np.int64)
        k = np.searchsorted(a, side.ends, side="left") - 1  # last span starting before the token ends
        kc = np.clip(k, 0, None)
        target = (k >= 0) & (b[kc] > side.starts) & (side.ends > side.starts)
        after = np.searchsorted(side.starts, b, side="left")
        after = after[after < side.ids.size]
        after = after[table.eot[side.ids[after]]]
        target[after] = True
    return np.where(target, side.ids, IGNORE_INDEX)


def _prepare_inputs(
    teacher_tokenizer: Any,
    student_tokenizer: Any,
    messages: Any,
    roles: Sequence[str] | None,
    max_length: int | None,
    teacher_max_length: int | None,
    targets: str,
) -> tuple[list[Mapping[str, Any]], list[bool]]:
    check_targets(targets)
    require_fast(teacher_tokenizer, "teacher")
    require_fast(student_tokenizer, "student")
    _check_length("max_length", max_length)
    _check_length("teacher_max_length", teacher_max_length)
    msgs = _check_messages(messages)
    aligned = _check_roles(msgs, roles)
    if not any(m["role"] == "assistant" for m in msgs):
        raise AlignmentError(
            "conversation has no 'assistant' message, so no student token is a target; "
            f"roles present: {sorted({m['role'] for m in msgs})}"
        )
    return msgs, aligned


def _cut_student(labels: np.ndarray, max_length: int | None) -> int:
    n = labels.size
    cut = n if max_length is None else min(n, max_length)
    if not (labels != IGNORE_INDEX).any():
        raise AlignmentError(
            "no student token is a target: the assistant content was not found in the student's encoding "
            "(does it contain special-token text such as '<|im_end|>' or '</s>'?)"
        )
    if not (labels[:cut] != IGNORE_INDEX).any():
        raise PromptTooLongError(
            f"the prompt fills max_length={max_length}: no target token among the first {cut} of "
            f"{n} student tokens (example discarded)"
        )
    return cut


def chunk_alignment(
    teacher_tokenizer: Any,
    student_tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    *,
    roles: Sequence[str] | None = None,
    max_length: int | None = None,
    teacher_max_length: int | None = None,
    targets: str = "last_turn",
) -> AlignedExample:
    """Cross-tokenizer chunks for one conversation (docs/method.md#chunks).

    :param messages: ``[{"role": str, "content": str}, ...]``; must hold an ``assistant`` message.
    :param roles: roles whose content is chunked (default: every message).
    :param max_length: student cut; chunks whose student span passes it are dropped.
    :param teacher_max_length: teacher cap (``None``: no cap; the reference uses
        :data:`DEFAULT_TEACHER_MAX_LENGTH`). Truncation is
        :func:`tide_plugin.pipelines.cut_chunks`: the teacher is cut after the last chunk
        left by the student cut, then capped; chunks past either are dropped.
    :param targets: ``last_turn`` (the reference, docs/method.md#targets) or ``every_assistant_turn``
        (ours); see :data:`~tide_plugin.alignment.checks.TARGETS`.
    :return: :class:`AlignedExample` with ``student_chunk_ids`` ``[L_S]``,
        ``teacher_chunk_ids`` ``[L_T]`` (``-1`` = none, ids ``0..num_chunks-1``) and
        ``stats``: ``chunks``, ``dropped_chunks`` (``..._student_cut``,
        ``..._teacher_cap``), ``content_bytes``, ``covered_bytes`` (before truncation),
        ``kept_bytes``, ``unmatched_messages``, ``normalised_differ_messages``,
        ``student_truncated_tokens``, ``teacher_truncated_tokens``.
    :raises AlignmentError: bad tokenizers or conversation (the message names them).
    :raises PromptTooLongError: no target token survives ``max_length``.
    """
    msgs, aligned = _prepare_inputs(teacher_tokenizer, student_tokenizer, messages, roles, max_length,
                                    teacher_max_length, targets)
    s_table, t_table = byte_table(student_tokenizer), byte_table(teacher_tokenizer)
    student = encode_side(student_tokenizer, msgs, "student")
    teacher = encode_side(teacher_tokenizer, msgs, "teacher")
    al = align_chunks(s_table, t_table, student, teacher, [m["content"] for m in msgs], aligned)
    labels = _labels(student_tokenizer, s_table, al.student_side, student, msgs, targets)
    cut = _cut_student(labels, max_length)
    n_t = al.teacher_side.ids.size
    s_chunks, t_chunks, keep, by_cut, by_cap = cut_chunks(
        al.student_chunk_ids, al.teacher_chunk_ids, al.num_chunks, cut, n_t if teacher_max_length is None else teacher_max_length
    )
    t_cut = t_chunks.size
    stats = dict(al.stats)
    stats.update(
        chunks=float(keep),
        dropped_chunks=float(al.num_chunks - keep),
        dropped_chunks_student_cut=float(by_cut),
        dropped_chunks_teacher_cap=float(by_cap),
        kept_bytes=float(al.chunk_bytes[:keep].sum()),
        student_truncated_tokens=float(labels.size - cut),
        teacher_truncated_tokens=float(n_t - t_cut),
    )
    return AlignedExample(
        student_ids=al.student_side.ids[:cut].tolist(),
        labels=labels[:cut].tolist(),
        teacher_ids=al.teacher_side.ids[:t_cut].tolist(),
        student_chunk_ids=s_chunks.tolist(),
        teacher_chunk_ids=t_chunks.tolist(),
        num_chunks=keep,
        stats=stats,
    )


def template_pairs(
    teacher_tokenizer: Any,
    student_tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    *,
    roles: Sequence[str] | None = None,
    max_length: int | None = None,
    teacher_max_length: int | None = None,
    targets: str = "last_turn",
) -> AlignedExample:
    """Template-aligned position pairs for a shared vocabulary (docs/method.md#template-alignment).

    Per aligned message, the content tokens of each side (tokens whose bytes lie
    fully inside the content range) are paired in order up to the shorter count;
    pairs whose ids differ are dropped and counted (``dropped_pairs``). Truncation
    is :func:`tide_plugin.pipelines.cut_pairs`: pairs past ``max_length`` are
    dropped, the teacher is cut after its last pair left, then capped at
    ``teacher_max_length`` (pairs past it dropped). ``targets`` as in
    :func:`chunk_alignment`.

    :return: :class:`AlignedExample` with ``pairs`` ``[(student_pos, teacher_pos), ...]``,
        ``dropped_pairs`` (id mismatches) and ``stats``: ``pairs``, ``dropped_pairs``,
        ``unpaired_tokens`` (content tokens beyond the shorter count),
        ``truncated_pairs``, ``unmatched_messages``, ``student_truncated_tokens``,
        ``teacher_truncated_tokens``.
    :raises AlignmentError: bad tokenizers or conversation.
    :raises PromptTooLongError: no target token survives ``max_length``.
    """
    msgs, aligned = _prepare_inputs(teacher_tokenizer, student_tokenizer, messages, roles, max_length,
                                    teacher_max_length, targets)
    s_table, t_table = byte_table(student_tokenizer), byte_table(teacher_tokenizer)
    student = encode_side(student_tokenizer, msgs, "student")
    teacher = encode_side(teacher_tokenizer, msgs, "teacher")
    contents = [m["content"] for m in msgs]
    S = side_bytes(s_table, student, [s_table.encode_text(c) for c in contents])
    T = side_bytes(t_table, teacher, [t_table.encode_text(c) for c in contents])
    s_pos: list[np.ndarray] = []
    t_pos: list[np.ndarray] = []
    unmatched = unpaired = 0
    for k, use in enumerate(aligned):
        if not use:
            continue
        a, b = S.spans[k], T.spans[k]
        if a is None or b is None:
            unmatched += 1
            continue
        si = np.arange(np.searchsorted(S.starts, a[0], "left"), np.searchsorted(S.ends, a[1], "right"))
        ti = np.arange(np.searchsorted(T.starts, b[0], "left"), np.searchsorted(T.ends, b[1], "right"))
        si = si[S.ends[si] > S.starts[si]]
        ti = ti[T.ends[ti] > T.starts[ti]]
        m = min(si.size, ti.size)
        unpaired += si.size + ti.size - 2 * m
        s_pos.append(si[:m]), t_pos.append(ti[:m])
    sp = np.concatenate(s_pos) if s_pos else np.zeros(0, np.int64)
    tp = np.concatenate(t_pos) if t_pos else np.zeros(0, np.int64)
    same = S.ids[sp] == T.ids[tp]
    dropped = int((~same).sum())
    sp, tp = sp[same], tp[same]
    labels = _labels(student_tokenizer, s_table, S, student, msgs, targets)
    cut = _cut_student(labels, max_length)
    n_t = T.ids.size
    before = sp.size
    sp, tp, t_cut = cut_pairs(sp, tp, n_t, cut, n_t if teacher_max_length is None else teacher_max_length)
    truncated = before - sp.size
    stats = {
        "pairs": float(sp.size),
        "dropped_pairs": float(dropped),
        "unpaired_tokens": float(unpaired),
        "truncated_pairs": float(truncated),
        "unmatched_messages": float(unmatched),
        "student_truncated_tokens": float(labels.size - cut),
        "teacher_truncated_tokens": float(n_t - t_cut),
    }
    return AlignedExample(
        student_ids=S.ids[:cut].tolist(),
        labels=labels[:cut].tolist(),
        teacher_ids=T.ids[:t_cut].tolist(),
        pairs=list(zip(sp.tolist(), tp.tolist())),
        dropped_pairs=dropped,
        stats=stats,
    )


def same_tokens(
    teacher_tokenizer: Any,  # noqa: ARG001
    student_tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    *,
    roles: Sequence[str] | None = None,
    max_length: int | None = None,
    teacher_max_length: int | None = None,  # noqa: ARG001 - the teacher reads the student's ids
    targets: str = "last_turn",
) -> AlignedExample:
    """The ``same`` pipeline (``docs/method.md#shared-vocabulary``): one tokenizer and one
    chat template, so there is nothing to align; the student's ids and labels, cut at
    ``max_length``, are what the teacher reads too (``teacher_ids`` equal them;
    ``teacher_tokenizer`` is not read: :func:`~tide_plugin.alignment.preprocess.preprocess`
    checks it is the student's).

    :raises AlignmentError: bad tokenizer or conversation.
    :raises PromptTooLongError: no target token survives ``max_length``.
    """
    msgs, _ = _prepare_inputs(student_tokenizer, student_tokenizer, messages, roles, max_length, None, targets)
    table = byte_table(student_tokenizer)
    enc = encode_side(student_tokenizer, msgs, "student")
    side = side_bytes(table, enc, [table.encode_text(m["content"]) for m in msgs])
    labels = _labels(student_tokenizer, table, side, enc, msgs, targets)
    cut = _cut_student(labels, max_length)
    ids = side.ids[:cut].tolist()
    return AlignedExample(student_ids=ids, labels=labels[:cut].tolist(), teacher_ids=list(ids),
                          stats={"student_truncated_tokens": float(labels.size - cut)})
