"""Offline alignment of student and teacher tokens (docs/method.md#template-alignment, docs/method.md#chunks) and ``tide preprocess``.

Nothing here runs at collate time: preprocessing aligns every conversation once and
saves the rows the collators read (:mod:`tide_plugin.batch`).

Two aligners turn a chat conversation (``[{"role": ..., "content": ...}, ...]``)
into an unpadded :class:`tide_plugin.batch.AlignedExample`:

* :func:`chunk_alignment` (different tokenizers, docs/method.md#chunks): per-token chunk ids
  such that every chunk's teacher tokens and student tokens spell exactly the
  same bytes.
* :func:`template_pairs` (shared vocabulary, different chat templates,
  docs/method.md#template-alignment): ``(student_pos, teacher_pos)`` pairs of content tokens with equal ids.

How text is compared. Each side renders the conversation with its own chat
template and tokenizes it (fast tokenizer, offsets). The *encoded bytes* ``E``
of a side are the concatenation of its tokens' bytes from a per-vocabulary
:class:`ByteTable`: byte-level BPE characters (``Ġ`` ...) are mapped back to
bytes, SentencePiece ``▁`` to a space and byte-fallback pieces ``<0xNN>`` to
their byte; special tokens have no bytes; the dummy-prefix ``▁`` that
SentencePiece adds at the start of each text segment is removed. ``E`` is the
text each side actually encodes (after its normaliser, e.g. NFC for Qwen).
Each message's content, passed through the side's normaliser, is searched in
``E`` forward from the previous match (starting no earlier than the token that
holds the content's first character in the rendering). Inside each pair of
content ranges the two token sequences are walked with cumulative byte lengths
(numpy byte masks): every byte position that is a token boundary on both sides closes a
chunk. Where the two sides' normalisers make the content differ (a non-NFC
string under Qwen's NFC), only the byte runs that are equal on both sides
(``difflib`` matching blocks) are chunked, so a chunk never spells different
bytes on the two sides. A token that holds the template's space and the first
bytes of a content (``"[INST] hi"`` -> ``▁hi``, ``"\\n hi"`` -> ``Ġhi``) may open a
chunk there: its bytes after that space are compared (docs/method.md#chunks, last paragraph).

Labels (student side, docs/method.md#targets, :data:`TARGETS`): ``last_turn`` (default, the
reference) makes the last assistant turn a target with its end-of-turn token and
the newline the template puts after it, every earlier turn prompt (``-100``);
``every_assistant_turn`` (ours) makes targets of the tokens that overlap the
content of every ``assistant`` message and of the end-of-turn token right after
each (the first token after the content, when it is the EOS token or a special
token whose text contains ``end`` / ``eot``: ``<|im_end|>``, ``</s>``).
"""

from __future__ import annotations

from .aligners import chunk_alignment, template_pairs
from .bytetable import ByteTable, byte_table
from .checks import (
    DEFAULT_TEACHER_MAX_LENGTH,
    IGNORE_INDEX,
    TARGETS,
    AlignmentError,
    PromptTooLongError,
    UnrenderableError,
    resolve_mask_id,
)
from .chunks import ChunkAlignment, align_chunks
from .encode import SideEncoding, encode_side
from .metadata import dataset_tokenizers, tokenizer_fingerprint

__all__ = [
    "DEFAULT_TEACHER_MAX_LENGTH",
    "IGNORE_INDEX",
    "TARGETS",
    "AlignmentError",
    "ByteTable",
    "ChunkAlignment",
    "PromptTooLongError",
    "SideEncoding",
    "UnrenderableError",
    "align_chunks",
    "byte_table",
    "chunk_alignment",
    "dataset_tokenizers",
    "encode_side",
    "resolve_mask_id",
    "template_pairs",
    "tokenizer_fingerprint",
]
