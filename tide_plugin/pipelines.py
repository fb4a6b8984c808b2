"""One strategy object per pipeline (docs/method.md#pipelines): what differs between ``same``,
``shared`` and ``cross`` is written here once, and every layer asks the strategy.

- ``same`` (docs/method.md#shared-vocabulary): the teacher reads the student's ids position by position.
- ``shared`` (docs/method.md#template-alignment): shared vocabulary, template-aligned ``(student, teacher)`` pairs.
- ``cross`` (docs/method.md#chunks): different tokenizers, byte-exact chunks.

A strategy knows a pipeline's row keys, its truncation rule (one implementation,
used offline by the aligners and at collate time by ``distill_pad``), how its
alignment fields are batched, how the student mask reaches the teacher (docs/method.md#mask-propagation),
how CompDemo's split reaches the teacher (docs/method.md#compdemo) and which ids the teacher reads.
Look one up with :func:`get_pipeline`. This module knows only numpy and torch;
batches are read by field name.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

Pipeline = Literal["same", "shared", "cross"]
PIPELINES: tuple[str, ...] = ("same", "shared", "cross")
"""Every pipeline name; ``same`` needs no preprocessing (:data:`ALIGNED_PIPELINES` do)."""
ALIGNED_PIPELINES: tuple[str, ...] = ("shared", "cross")
ChunkNoise = Literal["unbiased", "reference"]
CHUNK_NOISE_RULES: tuple[str, ...] = ("unbiased", "reference")
"""How the ``cross`` pipeline draws its chunk-consistent mask
(docs/method.md#mask-propagation): ``unbiased`` (ours, the default) draws one
Bernoulli(``p``) per chunk, ``reference`` the paper's per-token draw that masks a
chunk as soon as one of its tokens is hit."""
IGNORE_INDEX = -100
"""Label of a non-target token (prompt, batch padding)."""

# Keys of one preprocessed dataset row (what `tide preprocess` writes and `distill_pad` reads).
ROW_STUDENT_IDS = "input_ids"  # [L_S]
ROW_LABELS = "labels"  # [L_S], -100 on prompt tokens
ROW_TEACHER_IDS = "teacher_input_ids"  # [L_T] (shared / cross)
ROW_STUDENT_CHUNKS = "student_chunk_ids"  # [L_S] chunk id per token, -1 = none (cross)
ROW_TEACHER_CHUNKS = "teacher_chunk_ids"  # [L_T] (cross)
ROW_NUM_CHUNKS = "num_chunks"  # int (cross)
ROW_PAIR_STUDENT = "align_student"  # [P] student positions (shared)
ROW_PAIR_TEACHER = "align_teacher"  # [P] teacher positions (shared)


# -- the truncation rules of docs/method.md#template-alignment, docs/method.md#chunks (numpy; offline and at collate time) --------------
def cut_chunks(
    student_chunks: np.ndarray, teacher_chunks: np.ndarray, num_chunks: int, cut: int, cap: int
) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """docs/method.md#chunks: chunks with a student token at or past ``cut`` are dropped; the
    teacher is cut after the last chunk left (kept whole when none is left) and
    capped at ``cap``; chunks with a teacher token past that are dropped too. Kept
    chunks are renumbered ``0..k-1`` in order.

    :param student_chunks: ``[L_S]`` int64 chunk id per token, ``-1`` = none.
    :param teacher_chunks: ``[L_T]`` int64.
    :return: ``(student_chunks[:cut], teacher_chunks[:t_cut], kept, dropped_by_cut,
        dropped_by_cap)`` with renumbered ids.
    """
    n_t = teacher_chunks.size
    past_cut = np.zeros(num_chunks + 1, dtype=bool)  # slot num_chunks collects -1
    past_cut[np.where(student_chunks[cut:] >= 0, student_chunks[cut:], num_chunks)] = True
    left = np.flatnonzero((teacher_chunks >= 0) & ~past_cut[teacher_chunks])
    t_cut = min(int(left[-1]) + 1 if left.size else n_t, cap)
    dropped = past_cut.copy()
    dropped[np.where(teacher_chunks[t_cut:] >= 0, teacher_chunks[t_cut:], num_chunks)] = True
    keep = ~dropped[:num_chunks]
    kept = int(keep.sum())
    by_cut = int(past_cut[:num_chunks].sum())
    if kept < num_chunks:
        remap = np.where(np.append(keep, False), np.cumsum(np.append(keep, False)) - 1, -1)
        student_chunks, teacher_chunks = remap[student_chunks[:cut]], remap[teacher_chunks[:t_cut]]
    else:
        student_chunks, teacher_chunks = student_chunks[:cut], teacher_chunks[:t_cut]
    return student_chunks, teacher_chunks, kept, by_cut, num_chunks - kept - by_cut


def cut_pairs(
    pair_student: np.ndarray, pair_teacher: np.ndarray, teacher_len: int, cut: int, cap: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """docs/method.md#template-alignment: pairs whose student position is at or past ``cut`` are dropped; the
    teacher is cut after its last paired position left (kept whole when none is left)
    and capped at ``cap``; pairs past that are dropped too.

    :return: ``(pair_student, pair_teacher, t_cut)`` of the kept pairs.
    """
    inside = pair_student < cut
    t_cut = min(int(pair_teacher[inside].max()) + 1 if inside.any() else teacher_len, cap)
    keep = inside & (pair_teacher < t_cut)
    return pair_student[keep], pair_teacher[keep], t_cut


# -- chunk and pair tensors at collate time ----------------------------------------------------
def chunk_hits(flags: Tensor, chunk_ids: Tensor, num_chunks: int) -> Tensor:
    """``[b, C]`` bool: chunks with at least one True token in ``flags`` ``[b, L]``
    (``chunk_ids`` ``[b, L]``, ``-1`` = no chunk). One scatter, no Python loop."""
    b = flags.shape[0]
    flat = torch.zeros(b * num_chunks + 1, dtype=torch.bool, device=flags.device)  # last slot: sink for -1
    row = torch.arange(b, device=flags.device).unsqueeze(1) * num_chunks
    idx = torch.where(chunk_ids >= 0, row + chunk_ids, b * num_chunks)
    flat.index_put_((idx[flags],), torch.ones((), dtype=torch.bool, device=flags.device))
    return flat[:-1].view(b, num_chunks)


def gather_chunks(per_chunk: Tensor, chunk_ids: Tensor) -> Tensor:
    """Per-token value of a ``[b, C]`` bool table at ``chunk_ids`` ``[b, L]``; False
    where the token belongs to no chunk."""
    if per_chunk.shape[1] == 0:
        return torch.zeros(chunk_ids.shape, dtype=torch.bool, device=chunk_ids.device)
    return per_chunk.gather(1, chunk_ids.clamp_min(0)) & (chunk_ids >= 0)


def scatter_pairs(student_flags: Tensor, batch: Any, teacher_len: int) -> Tensor:
    """``[b, L_T]`` bool: teacher positions whose paired student position is set in
    ``student_flags`` ``[b, L]`` (the batch's ``pair_student`` / ``pair_teacher`` / ``pair_mask``)."""
    if batch.pair_student is None or batch.pair_teacher is None or batch.pair_mask is None:
        raise ValueError("shared pipeline batch lacks pair_student / pair_teacher / pair_mask (run distill_pad first)")
    b = student_flags.shape[0]
    out = torch.zeros(b * teacher_len + 1, dtype=torch.bool, device=student_flags.device)
    take = student_flags.gather(1, batch.pair_student) & batch.pair_mask
    row = torch.arange(b, device=student_flags.device).unsqueeze(1) * teacher_len
    out[torch.where(take, row + batch.pair_teacher, b * teacher_len).reshape(-1)] = True
    return out[:-1].view(b, teacher_len)


def stack_padded(arrays: Sequence[np.ndarray], length: int, fill: int, dtype: Any = np.int64) -> tuple[Tensor, Tensor]:
    """``[b, length]`` tensor of left-aligned ``arrays`` padded with ``fill``, and the
    ``[b, length]`` bool mask of the real entries."""
    out = np.full((len(arrays), length), fill, dtype=dtype)
    real = np.zeros((len(arrays), length), dtype=bool)
    for j, a in enumerate(arrays):
        out[j, : a.size], real[j, : a.size] = a, True
    return torch.from_numpy(out), torch.from_numpy(real)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


# -- the strategies ----------------------------------------------------------------------------
class PipelineStrategy:
    """What one pipeline does at each layer. Subclasses set the class attributes and
    override the methods whose behaviour differs."""

    name: ClassVar[str]
    row_keys: ClassVar[tuple[str, ...]]
    """Keys a dataset row of this pipeline must hold (``distill_pad`` requires them)."""
    written_keys: ClassVar[tuple[str, ...]] = ()
    """Keys ``tide preprocess`` writes for this pipeline (``row_keys`` and optional ones)."""
    scalar_keys: ClassVar[tuple[str, ...]] = ()
    """Those of ``written_keys`` that hold one int per row (the rest hold lists of ints)."""
    has_teacher_ids: ClassVar[bool] = True
    has_chunks: ClassVar[bool] = False
    has_pairs: ClassVar[bool] = False
    has_token_alignment: ClassVar[bool] = False
    """Teacher and student logits compare position by position (the shared pipeline's
    teacher reads another template: its objectives compare template pairs, ``has_pairs``)."""
    default_teacher_max_length: ClassVar[int | None] = None
    """docs/method.md#recipes: the reference's teacher length for this pipeline (preprocessing's default cap)."""

    def __repr__(self) -> str:
        return f"<pipeline {self.name}>"

    # collate time: one example, then the batch
    def cut_example(
        self, i: int, row: Mapping[str, Any], ids: np.ndarray, cut: int, cap: int | None, stats: dict[str, float]
    ) -> dict[str, np.ndarray]:
        """The alignment fields of row ``i``, truncated (student at ``cut``, teacher at ``cap``)."""
        return {}

    def batch_fields(self, examples: Sequence[Mapping[str, np.ndarray]], L: int, teacher_pad_id: int,
                     teacher_multiple: int) -> dict[str, Tensor]:
        """The batch tensors of the alignment fields (student length ``L``)."""
        return {}

    # noise (docs/method.md#mask-propagation) and CompDemo (docs/method.md#compdemo)
    def propagate_mask(
        self, batch: Any, masked: Tensor, maskable: Tensor, *, mask_prob: Tensor | None = None,
        generator: torch.Generator | None = None, chunk_noise: ChunkNoise = "unbiased",
    ) -> tuple[Tensor, Tensor]:
        """``(masked [b, L], teacher_masked [b, L_T])`` from the per-token draw
        ``masked``; may set ``batch.chunk_active``. ``mask_prob`` ``[b]`` (``p`` per
        example), ``generator`` and ``chunk_noise`` are read by pipelines whose mask
        is drawn per chunk (``cross``); the others ignore them and draw nothing."""
        raise NotImplementedError

    def demo_split(self, batch: Any, ratio: float, generator: torch.Generator) -> Tensor:
        """``[b, L_T]`` bool: teacher positions in CompDemo's set ``A`` (each masked
        element independently with probability ``ratio``, drawn from ``generator``)."""
        raise NotImplementedError

    def teacher_clean(self, batch: Any) -> tuple[Tensor, Tensor]:
        """``(clean ids [b, L_T], valid [b, L_T] bool)`` the teacher reads."""
        clean, valid = batch.teacher_input_ids, batch.teacher_attention_mask
        if clean is None:
            raise ValueError(f"{self.name} pipeline batch lacks teacher_input_ids (run distill_pad on {self.name} rows)")
        return clean, (torch.ones_like(clean, dtype=torch.bool) if valid is None else valid.bool())

    def _teacher_ids(self, i: int, row: Mapping[str, Any]) -> np.ndarray:
        return np.asarray(row[ROW_TEACHER_IDS], dtype=np.int64).reshape(-1)

    def _teacher_fields(self, examples: Sequence[Mapping[str, np.ndarray]], teacher_pad_id: int,
                        multiple: int) -> tuple[dict[str, Tensor], int]:
        LT = _round_up(max(max(e["teacher_input_ids"].size for e in examples), 1), multiple)
        ids, valid = stack_padded([e["teacher_input_ids"] for e in examples], LT, teacher_pad_id)
        return {"teacher_input_ids": ids, "teacher_attention_mask": valid}, LT


class SamePipeline(PipelineStrategy):
    """docs/method.md#shared-vocabulary: the teacher reads the student's ids and uses the student's mask."""

    name = "same"
    row_keys = (ROW_STUDENT_IDS, ROW_LABELS)
    written_keys = row_keys
    has_teacher_ids = False
    has_token_alignment = True

    def propagate_mask(self, batch, masked, maskable, **_: Any) -> tuple[Tensor, Tensor]:
        return masked, masked.clone()

    def demo_split(self, batch: Any, ratio: float, generator: torch.Generator) -> Tensor:
        masked = batch.masked
        return masked & (torch.rand(masked.shape, generator=generator) < ratio).to(masked.device)

    def teacher_clean(self, batch: Any) -> tuple[Tensor, Tensor]:
        return batch.input_ids, batch.attention_mask.bool()


class SharedPipeline(PipelineStrategy):
    """docs/method.md#template-alignment: template-aligned pairs with equal ids; the mask follows the pairs."""

    name = "shared"
    row_keys = (ROW_STUDENT_IDS, ROW_LABELS, ROW_TEACHER_IDS, ROW_PAIR_STUDENT, ROW_PAIR_TEACHER)
    written_keys = row_keys
    has_pairs = True
    default_teacher_max_length = 768

    def cut_example(self, i, row, ids, cut, cap, stats):
        tids = self._teacher_ids(i, row)
        n, tn = ids.size, tids.size
        ps = np.asarray(row[ROW_PAIR_STUDENT], dtype=np.int64).reshape(-1)
        pt = np.asarray(row[ROW_PAIR_TEACHER], dtype=np.int64).reshape(-1)
        if ps.size != pt.size:
            raise ValueError(f"row {i}: {ROW_PAIR_STUDENT} has {ps.size} pairs but {ROW_PAIR_TEACHER} {pt.size}")
        if ps.size and (ps.min() < 0 or ps.max() >= n or pt.min() < 0 or pt.max() >= tn):
            raise ValueError(f"row {i}: a pair position lies outside the sequences (student {n}, teacher {tn} tokens)")
        same_id = ids[ps] == tids[pt]  # docs/method.md#template-alignment (ours): pairs whose ids differ are dropped and counted
        stats["mismatched_pairs"] += int((~same_id).sum())
        kept_s, kept_t, t_cut = cut_pairs(ps[same_id], pt[same_id], tn, cut, tn if cap is None else cap)
        stats["dropped_pairs"] += int(same_id.sum()) - kept_s.size
        stats["truncated_teacher_examples"] += int(t_cut < tn)
        return {"teacher_input_ids": tids[:t_cut], "pair_student": kept_s, "pair_teacher": kept_t}

    def batch_fields(self, examples, L, teacher_pad_id, teacher_multiple):
        fields, _ = self._teacher_fields(examples, teacher_pad_id, teacher_multiple)
        P = max(e["pair_student"].size for e in examples)
        fields["pair_student"], fields["pair_mask"] = stack_padded([e["pair_student"] for e in examples], P, 0)
        fields["pair_teacher"], _ = stack_padded([e["pair_teacher"] for e in examples], P, 0)
        return fields

    def propagate_mask(self, batch, masked, maskable, **_: Any) -> tuple[Tensor, Tensor]:
        return masked, scatter_pairs(masked, batch, batch.teacher_input_ids.shape[1])

    def demo_split(self, batch: Any, ratio: float, generator: torch.Generator) -> Tensor:
        masked = batch.masked
        in_a = masked & (torch.rand(masked.shape, generator=generator) < ratio).to(masked.device)
        return scatter_pairs(in_a, batch, batch.teacher_masked.shape[1])


class CrossPipeline(PipelineStrategy):
    """docs/method.md#chunks: byte-exact chunks; chunk-consistent masking; the CompDemo split is per masked chunk."""

    name = "cross"
    row_keys = (ROW_STUDENT_IDS, ROW_LABELS, ROW_TEACHER_IDS, ROW_STUDENT_CHUNKS, ROW_TEACHER_CHUNKS)
    written_keys = (*row_keys, ROW_NUM_CHUNKS)
    scalar_keys = (ROW_NUM_CHUNKS,)
    has_chunks = True
    default_teacher_max_length = 1024

    def cut_example(self, i, row, ids, cut, cap, stats):
        tids = self._teacher_ids(i, row)
        n, tn = ids.size, tids.size
        sch = np.asarray(row[ROW_STUDENT_CHUNKS], dtype=np.int64).reshape(-1)
        tch = np.asarray(row[ROW_TEACHER_CHUNKS], dtype=np.int64).reshape(-1)
        if sch.size != n:
            raise ValueError(f"row {i}: {ROW_STUDENT_CHUNKS} has {sch.size} entries for {n} student tokens")
        if tch.size != tn:
            raise ValueError(f"row {i}: {ROW_TEACHER_CHUNKS} has {tch.size} entries for {tn} teacher tokens")
        top = max(int(sch.max()) if n else -1, int(tch.max()) if tn else -1)
        nc = int(row[ROW_NUM_CHUNKS]) if ROW_NUM_CHUNKS in row else top + 1
        if top >= nc:
            raise ValueError(f"row {i}: a chunk id is >= {ROW_NUM_CHUNKS} ({nc})")
        sch, tch, kept, by_cut, by_cap = cut_chunks(sch, tch, nc, cut, tn if cap is None else cap)
        stats["dropped_chunks"] += by_cut + by_cap
        stats["truncated_teacher_examples"] += int(tch.size < tn)
        return {"teacher_input_ids": tids[: tch.size], "student_chunk_ids": sch, "teacher_chunk_ids": tch,
                "num_chunks": np.asarray(kept)}

    def batch_fields(self, examples, L, teacher_pad_id, teacher_multiple):
        fields, LT = self._teacher_fields(examples, teacher_pad_id, teacher_multiple)
        fields["student_chunk_ids"], _ = stack_padded([e["student_chunk_ids"] for e in examples], L, -1)
        fields["teacher_chunk_ids"], _ = stack_padded([e["teacher_chunk_ids"] for e in examples], LT, -1)
        fields["num_chunks"] = torch.from_numpy(np.stack([e["num_chunks"] for e in examples]).astype(np.int64))
        return fields

    def _chunks(self, batch: Any) -> tuple[Tensor, Tensor, int]:
        if batch.student_chunk_ids is None or batch.teacher_chunk_ids is None or batch.num_chunks is None:
            raise ValueError("cross pipeline batch lacks chunk ids (run distill_pad on cross rows first)")
        return batch.student_chunk_ids, batch.teacher_chunk_ids, batch.max_chunks

    def propagate_mask(
        self, batch: Any, masked: Tensor, maskable: Tensor, *, mask_prob: Tensor | None = None,
        generator: torch.Generator | None = None, chunk_noise: ChunkNoise = "unbiased",
    ) -> tuple[Tensor, Tensor]:
        """Chunk-consistent masking (docs/method.md#mask-propagation): a masked chunk
        has all its maskable student tokens and all its teacher tokens masked.

        - ``unbiased``: one ``u ~ U[0, 1)`` per chunk from ``generator`` (drawn after
          the per-token ones), masked iff ``u < mask_prob`` of its example; only
          chunks with a maskable student token are drawn (a prompt-only chunk stays
          visible to both sides, as under the per-token draw). Tokens outside every
          chunk keep their per-token draw. Every maskable token is masked with
          probability ``p``.
        - ``reference``: a chunk is masked (*hit*) when one of its student tokens is
          masked by the per-token draw; this masks more than ``p``.

        ``batch.chunk_active`` ``[b, C]``: masked chunks without a prompt token."""
        s_chunks, t_chunks, C = self._chunks(batch)
        if chunk_noise == "reference":
            hit = chunk_hits(masked, s_chunks, C)
            masked = masked | (gather_chunks(hit, s_chunks) & maskable)
        elif chunk_noise == "unbiased":
            if mask_prob is None or generator is None:
                raise ValueError("chunk_noise 'unbiased' needs mask_prob [b] and the noise stage's generator")
            u = torch.rand((s_chunks.shape[0], C), generator=generator).to(s_chunks.device)
            hit = (u < mask_prob.to(s_chunks.device).unsqueeze(1)) & chunk_hits(maskable, s_chunks, C)
            masked = torch.where(s_chunks >= 0, gather_chunks(hit, s_chunks) & maskable, masked)
        else:
            raise ValueError(f"chunk_noise {chunk_noise!r} is not one of {CHUNK_NOISE_RULES}")
        batch.chunk_active = hit & ~chunk_hits(~maskable, s_chunks, C)
        return masked, gather_chunks(hit, t_chunks)

    def demo_split(self, batch: Any, ratio: float, generator: torch.Generator) -> Tensor:
        s_chunks, t_chunks, C = self._chunks(batch)
        # under either chunk_noise rule a masked chunk has a masked student token
        hit = chunk_hits(batch.masked, s_chunks, C)
        in_a = hit & (torch.rand(hit.shape, generator=generator) < ratio).to(hit.device)
        return gather_chunks(in_a, t_chunks)


_STRATEGIES: dict[str, PipelineStrategy] = {s.name: s for s in (SamePipeline(), SharedPipeline(), CrossPipeline())}


def get_pipeline(name: str) -> PipelineStrategy:
    """The strategy of pipeline ``name`` (``same``, ``shared`` or ``cross``)."""
    strategy = _STRATEGIES.get(name) if isinstance(name, str) else None
    if strategy is None:
        close = difflib.get_close_matches(str(name), PIPELINES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"pipeline {name!r} is not one of {PIPELINES}{hint}")
    return strategy


def infer_pipeline(row: Mapping[str, Any]) -> str:
    """The pipeline a dataset row was preprocessed for, from its keys."""
    if ROW_STUDENT_CHUNKS in row:
        return "cross"
    if ROW_PAIR_STUDENT in row:
        return "shared"
    if ROW_TEACHER_IDS in row:
        raise ValueError(
            f"row has {ROW_TEACHER_IDS!r} but neither chunk ids ({ROW_STUDENT_CHUNKS!r}) nor pairs "
            f"({ROW_PAIR_STUDENT!r}); cannot infer the pipeline: set distill_pad's pipeline to 'same', 'shared' "
            "or 'cross', or preprocess the data with `tide preprocess`"
        )
    return "same"
