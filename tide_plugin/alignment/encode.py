"""One side of a conversation: rendering and tokenization (:func:`encode_side`), then
its encoded bytes and where each content lies in them (:func:`side_bytes`), what the
chunk walk and the aligners read."""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np

from .bytetable import ByteTable
from .checks import AlignmentError, UnrenderableError, require_fast, tokenizer_name

# one side: rendering, tokenization, encoded bytes

_MARK = re.compile("\ue000(\\d+)\ue001")


@dataclass
class SideEncoding:
    """One side of a conversation, tokenized.

    :ivar text: the rendered conversation (chat template applied).
    :ivar ids: token ids (no special tokens added beyond what the template writes).
    :ivar offsets: ``(start, end)`` character offsets into ``text`` per token.
    :ivar content_chars: ``(start, end)`` character span of each message's content in
        ``text``, or ``None`` when the template changes the content (then the search
        in the encoded bytes starts from the previous match only).
    """

    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]
    content_chars: list[tuple[int, int]] | None


def _render(tok: Any, messages: Sequence[Mapping[str, Any]], side: str) -> str:
    if not getattr(tok, "chat_template", None):
        raise AlignmentError(
            f"{side} tokenizer {tokenizer_name(tok)!r} has no chat template; set tokenizer.chat_template"
        )
    try:
        text = tok.apply_chat_template(list(messages), tokenize=False)
    except Exception as exc:  # the template's own check (jinja raise_exception, ...) or a missing key
        roles = [m.get("role") for m in messages]
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnrenderableError(f"the {side} chat template cannot render roles {roles}: {reason}") from exc
    if not isinstance(text, str):
        raise AlignmentError(f"{side} tokenizer's apply_chat_template(tokenize=False) returned {type(text).__name__}")
    return text


def _content_chars(tok: Any, messages: Sequence[Mapping[str, Any]], text: str) -> list[tuple[int, int]] | None:
    """Exact character spans of the contents in ``text``: render once more with
    numbered markers in place of the contents and check the reconstruction."""
    marked = [{**m, "content": f"\ue000{k}\ue001"} for k, m in enumerate(messages)]
    try:
        skeleton = tok.apply_chat_template(marked, tokenize=False)
    except Exception:
        return None
    parts = _MARK.split(skeleton)
    if len(parts) != 2 * len(messages) + 1 or [int(x) for x in parts[1::2]] != list(range(len(messages))):
        return None
    spans, pos, rebuilt = [], 0, []
    for k, m in enumerate(messages):
        pos += len(parts[2 * k])
        spans.append((pos, pos + len(m["content"])))
        pos += len(m["content"])
        rebuilt += [parts[2 * k], m["content"]]
    rebuilt.append(parts[-1])
    return spans if "".join(rebuilt) == text else None


def encode_side(tok: Any, messages: Sequence[Mapping[str, Any]], side: str = "student") -> SideEncoding:
    """Render ``messages`` with ``tok``'s chat template and tokenize with offsets."""
    require_fast(tok, side)
    text = _render(tok, messages, side)
    enc = tok.backend_tokenizer.encode(text, add_special_tokens=False)
    return SideEncoding(text=text, ids=enc.ids, offsets=enc.offsets, content_chars=_content_chars(tok, messages, text))


@dataclass
class SideBytes:
    """One side as bytes: its *encoded bytes* ``E`` (its tokens' bytes laid end to end,
    :mod:`tide_plugin.alignment`), each token's byte range in ``E``, and each content's.

    :ivar ids: ``[n]`` int64 token ids.
    :ivar starts: ``[n]`` byte start of each token in ``E``.
    :ivar ends: ``[n]`` byte end of each token in ``E`` (``starts == ends``: no bytes).
    :ivar encoded: ``E``.
    :ivar encoded_len: ``len(E)``.
    :ivar spans: per message, the ``(start, end)`` byte range of its content in ``E``,
        or ``None`` when the content was not found.
    """

    ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    encoded: bytes
    encoded_len: int
    spans: list[tuple[int, int] | None]


def side_bytes(table: ByteTable, enc: SideEncoding, contents: Sequence[bytes]) -> SideBytes:
    """``enc`` as bytes through ``table``: the dummy-prefix space SentencePiece adds to a
    text segment removed, and each of ``contents`` (the messages' contents as
    ``table.encode_text`` gives them, in order) searched in ``E`` forward from the
    previous match, no earlier than the token holding the content's first character.

    :raises AlignmentError: a token id outside ``table``'s vocabulary.
    """
    ids_list = enc.ids
    n = len(ids_list)
    ids = np.fromiter(ids_list, dtype=np.int64, count=n)
    if n and (ids.min() < 0 or ids.max() >= table.size):
        raise AlignmentError(f"token id out of range for a vocabulary of {table.size}: {int(ids.max())}")
    lens = table.lengths[ids]
    parts = list(itemgetter(*ids_list)(table.pieces)) if n > 1 else [table.pieces[i] for i in ids_list]
    if table.prepends and n:
        # The dummy prefix: SentencePiece writes "▁" before each text segment (after
        # every added token). Found by comparing a segment's token bytes with its text.
        added = table.added[ids]
        first = np.flatnonzero(~added & table.starts_space[ids] & np.concatenate(([True], added[:-1])))
        if first.size:
            lens = lens.copy()
            added_pos = np.flatnonzero(added)
            for i in first.tolist():
                nxt = int(np.searchsorted(added_pos, i))
                j = int(added_pos[nxt]) if nxt < added_pos.size else n
                a = enc.offsets[i - 1][1] if i > 0 else 0
                b = enc.offsets[j][0] if j < n else len(enc.text)
                expected = len(table.encode_text(enc.text[a:b]))
                if int(lens[i:j].sum()) == expected + 1:
                    lens[i] -= 1
                    parts[i] = parts[i][1:]
    ends = np.cumsum(lens)
    starts = ends - lens
    encoded = b"".join(parts)
    spans: list[tuple[int, int] | None] = []
    pos = 0
    off = enc.offsets
    for k, content in enumerate(contents):
        lo = pos
        if enc.content_chars is not None:
            a = enc.content_chars[k][0]
            t0 = bisect.bisect_right(off, a, key=itemgetter(1))  # first token ending after char a
            if t0 < n:
                lo = max(lo, int(starts[t0]))
        p = encoded.find(content, lo)
        if p < 0:
            spans.append(None)
            continue
        spans.append((p, p + len(content)))
        pos = p + len(content)
    return SideBytes(ids=ids, starts=starts, ends=ends, encoded=encoded, encoded_len=len(encoded), spans=spans)
