"""Full-distribution cross-tokenizer objectives for masked diffusion
(``docs/method.md#projected-kl``, ``docs/method.md#hybrid-kl``).

Registered names:

- ``projected_kl`` (after X-Token's P-KL, arXiv 2605.21699): at the first token of every
  active chunk, ``KL(Q || P_S) * tau^2`` with ``Q = P_T W`` renormalised over the mass
  ``W`` maps (``reverse=True``: ``KL(P_S || Q)`` on the support of ``W``);
- ``xtoken_hybrid`` (X-Token's H-KL): at the same rows, KL on the teacher/student token
  pairs that ``W`` maps one to one plus ULD's sorted-probability L1 on all other tokens.

Both read the run's vocabulary projection ``W`` ``[V_T, V_S]`` from
``inputs.projection`` (a :class:`~tide_plugin.alignment.projection.VocabProjection`).

Where the rows are. A chunk is a byte span that both tokenizations cover with whole
tokens (``docs/method.md#chunks``); an active chunk is masked whole on both sides and
holds no prompt token (``docs/method.md#mask-propagation``). At the chunk's first student token
and first teacher token, both models predict the start of the same bytes from the same
unmasked context, so their next-token distributions are comparable once the teacher's
is carried to the student's vocabulary. Later tokens of a chunk are not: they are
conditioned on different (masked) prefixes.

Why H-KL rather than GOLD for the hybrid. GOLD (TRL ``trl/experimental/gold``) matches
tokens by literal string equality, so ``▁the`` and ``Ġthe`` never match, and needs
both tokenizers' strings at loss time. ``W`` already encodes equality after normalising
those conventions, and X-Token's H-KL reads its one-to-one part from ``W``: teacher token
``u`` is paired with its top student token ``v`` when ``W[u, v] >= match_threshold``
(0.6, NeMo RL's relaxed rule); with ``match_threshold=1.0`` only rows with a single
entry pair up, which is GOLD's strict partition. At a chunk's first position the pairs
are the tokens that start the span identically on both sides (the exact-match
supervision GOLD keeps), and ULD's rank matching handles what is left (teacher tokens
that run past the student's first token, tokens ``W`` cannot map) without needing
identities. ``projected_kl`` is the partition-free alternative; X-Token finds P-KL better
when critical tokens fall outside the partition and H-KL better when the partition is
reliable.

Hyperparameters. ``temperature=1.0`` for both: X-Token's reference implementations use
1.0 (NeMo RL ``examples/configs/xtoken_off_policy_distillation.yaml``
``loss_fn.temperature: 1.0``; TRL ``train_xtoken.py`` ``--xtoken-temperature 1.0``),
with the loss multiplied by ``tau^2`` as in NeMo RL. ``uncommon_topk=8192`` and
``match_threshold=0.6``: NeMo RL's ``loss_fn.uncommon_topk`` and relaxed exact-map
threshold.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..alignment.projection import VocabProjection
from ..batch import DistillInputs
from ..hookspecs import PluginSpec, Requirement, Unit, hookimpl
from .base import Objective, check_temperature_weight
from .rows import chunk_first_positions, row_divergence

__all__ = [
    "MIN_MAPPED_MASS",
    "HybridKLConfig",
    "ProjectedKL",
    "ProjectedKLConfig",
    "XTokenHybrid",
    "chunk_first_rows",
    "hybrid_kl_rows",
    "one_to_one_pairs",
    "projected_kl_rows",
]

MIN_MAPPED_MASS = 1e-6
"""A row whose teacher mass mapped by ``W`` is below this is excluded (and counted):
renormalising it would amplify rounding noise into a target."""

CACHE_FIRST_ROWS = "chunk_first_rows"
"""``inputs.cache`` key: ``(batch_index, student_pos, teacher_pos, n_active, n_missing)``."""


# ---------------------------------------------------------------------------
# pure per-row divergences
# ---------------------------------------------------------------------------
def projected_kl_rows(
    student_row_logits: Tensor,
    teacher_row_probs_projected: Tensor,
    *,
    temperature: float,
    reverse: bool = False,
    support: Tensor | None = None,
) -> Tensor:
    """Per-row KL between ``Q`` (the teacher's distribution carried to the student
    vocabulary, rows summing to 1) and ``P_S = softmax(z_S / tau)``, without ``tau^2``.

    :param student_row_logits: ``[N, V_S]``. :param teacher_row_probs_projected: ``[N, V_S]``.
    :param reverse: ``False``: ``KL(Q || P_S)`` (``0 log 0 = 0``). ``True``:
        ``KL(P_S' || Q)`` where ``P_S'`` is ``P_S`` restricted to ``support`` and
        renormalised: the reverse KL is infinite wherever ``Q`` is 0 and ``P_S`` is not,
        and no student token outside ``W``'s columns carries teacher information.
    :param support: ``[V_S]`` or ``[N, V_S]`` bool, the student tokens ``Q`` may cover
        (``W``'s column support); default ``Q > 0``. ``Q`` is clamped to the smallest
        float32 inside it (probabilities that underflowed).
    :return: ``[N]`` in float32 (float64 for float64 inputs); differentiable in the logits.
    """
    work = torch.promote_types(student_row_logits.dtype, torch.float32)
    u = student_row_logits.to(work) / float(temperature)
    q = teacher_row_probs_projected.to(work)
    if not reverse:
        return (torch.xlogy(q, q) - q * torch.log_softmax(u, dim=-1)).sum(-1)
    sup = (q > 0) if support is None else support.to(q.device).expand_as(q)
    log_ps = torch.log_softmax(u.masked_fill(~sup, float("-inf")), dim=-1).masked_fill(~sup, 0.0)
    p_s = log_ps.exp().masked_fill(~sup, 0.0)
    log_q = q.clamp_min(torch.finfo(torch.float32).tiny).log()
    return (p_s * (log_ps - log_q)).sum(-1)


def hybrid_kl_rows(
    student_row_logits: Tensor,
    teacher_row_log_probs: Tensor,
    *,
    temperature: float,
    teacher_ids: Tensor,
    student_ids: Tensor,
    teacher_unmatched: Tensor,
    student_unmatched: Tensor,
    uncommon_topk: int = 8192,
    reverse: bool = False,
) -> Tensor:
    """Per-row H-KL, without ``tau^2``: ``sum_(u,v) KL_uv + sum_k |sort(P_S[S_u])_k - sort(P_T[T_u])_k|``.

    ``P_S = softmax(z_S / tau)`` over the full student vocabulary; ``P_T`` the teacher's
    over its full vocabulary (given as log-probs, already at temperature ``tau``).
    ``KL_uv = P_T[u] (log P_T[u] - log P_S[v])`` over the one-to-one pairs
    ``(teacher_ids, student_ids)`` (``reverse``: ``P_S[v] (log P_S[v] - log P_T[u])``),
    unnormalised as in NeMo RL's gold path. The L1 term compares the ``k`` largest
    probabilities of the unmatched student tokens ``S_u`` and teacher tokens ``T_u``,
    ``k = min(|S_u|, |T_u|, uncommon_topk)``, each sorted descending (ULD).

    :param student_row_logits: ``[N, V_S]``. :param teacher_row_log_probs: ``[N, V_T]``.
    :return: ``[N]`` float32 (float64 for float64 inputs); differentiable in the logits.
    """
    work = torch.promote_types(student_row_logits.dtype, torch.float32)
    log_ps = torch.log_softmax(student_row_logits.to(work) / float(temperature), dim=-1)
    log_pt = teacher_row_log_probs.to(work)
    out = log_ps.new_zeros(log_ps.shape[0])
    if teacher_ids.numel():
        ls, lt = log_ps[:, student_ids], log_pt[:, teacher_ids]
        out = out + (ls.exp() * (ls - lt) if reverse else lt.exp() * (lt - ls)).sum(-1)
    k = min(int(student_unmatched.numel()), int(teacher_unmatched.numel()), int(uncommon_topk))
    if k > 0:
        top_s = log_ps[:, student_unmatched].exp().topk(k, dim=-1).values
        top_t = log_pt[:, teacher_unmatched].exp().topk(k, dim=-1).values
        out = out + (top_s - top_t).abs().sum(-1)
    return out


# ---------------------------------------------------------------------------
# reading W
# ---------------------------------------------------------------------------
def one_to_one_pairs(projection: VocabProjection, *, threshold: float = 0.6) -> tuple[Tensor, Tensor]:
    """``(teacher_ids, student_ids)`` ``[M]`` long, sorted by teacher id: the token pairs
    ``W`` maps one to one (X-Token's H-KL matching, read in ``W``'s teacher-to-student
    direction). Teacher token ``u`` is a candidate for its top student token ``v`` (ties:
    the lowest ``v``) when ``W[u, v] >= threshold``; when several candidates share a
    ``v``, the one with the largest weight wins, then the lowest teacher id (in BPE
    vocabularies a string's own token precedes the longer tokens that start with it).
    ``threshold=1.0`` keeps only rows with a single entry (GOLD's strict match)."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must lie in (0, 1], got {threshold!r}")
    vt = projection.teacher_vocab_size
    vals, cols = projection.values.float(), projection.indices.long()
    empty = torch.empty(0, dtype=torch.long, device=cols.device)
    if vals.numel() == 0:
        return empty, empty.clone()
    rows = projection.rows.to(cols.device)
    top = torch.zeros(vt, dtype=vals.dtype, device=vals.device).scatter_reduce_(0, rows, vals, "amax", include_self=False)
    at_top = vals >= top[rows]
    sentinel = projection.student_vocab_size
    top_col = torch.full((vt,), sentinel, dtype=torch.long, device=cols.device)
    top_col.scatter_reduce_(0, rows[at_top], cols[at_top], "amin", include_self=True)
    u = torch.nonzero((top >= threshold - 1e-6) & (top_col < sentinel), as_tuple=True)[0]
    if u.numel() == 0:
        return empty, empty.clone()
    v, w = top_col[u], top[u]
    best = torch.zeros(sentinel, dtype=w.dtype, device=w.device).scatter_reduce_(0, v, w, "amax", include_self=False)
    eligible = w >= best[v]
    first = torch.full((sentinel,), vt, dtype=torch.long, device=u.device)
    first.scatter_reduce_(0, v[eligible], u[eligible], "amin", include_self=True)
    win = eligible & (first[v] == u)
    return u[win], v[win]


def _projection(inputs: DistillInputs, who: str) -> VocabProjection:
    proj = inputs.projection
    if not isinstance(proj, VocabProjection):
        raise ValueError(
            f"objective {who!r} needs inputs.projection, the vocabulary projection W (a VocabProjection), "
            f"got {type(proj).__name__}; build W for the tokenizer pair and pass it with the run"
        )
    v_t, v_s = inputs.teacher_logits.shape[2], inputs.student_logits.shape[2]
    if proj.teacher_vocab_size > v_t or proj.student_vocab_size > v_s:
        raise ValueError(
            f"objective {who!r}: W is [V_T, V_S] = {list(proj.shape)}, larger than the teacher and student "
            f"logits' vocabularies ({v_t}, {v_s}); W must come from this run's tokenizers"
        )
    return proj


def chunk_first_rows(inputs: DistillInputs, who: str) -> tuple[Tensor, Tensor, Tensor, int, int]:
    """``(batch_index, student_pos, teacher_pos, n_active, n_missing)``: the first student
    and first teacher position of every active chunk (``[N]`` long each), the number of
    active chunks (the part's unit) and of active chunks lacking a token on either side
    (counted, not used). Cached in ``inputs.cache`` for composed objectives."""
    if CACHE_FIRST_ROWS in inputs.cache:
        return inputs.cache[CACHE_FIRST_ROWS]
    batch = inputs.batch
    missing = [f for f in ("student_chunk_ids", "teacher_chunk_ids", "num_chunks", "chunk_active") if getattr(batch, f) is None]
    if missing:
        raise ValueError(
            f"objective {who!r} needs batch fields {missing} from a 'cross' pipeline (chunk alignment and the 'noise' collator)"
        )
    num_chunks = batch.max_chunks
    active = batch.chunk_active
    if tuple(active.shape) != (batch.batch_size, num_chunks):
        raise ValueError(
            f"batch.chunk_active has shape {list(active.shape)}, expected [b, max_chunks]=[{batch.batch_size}, {num_chunks}]"
        )
    s_first = chunk_first_positions(batch.student_chunk_ids, num_chunks)
    t_first = chunk_first_positions(batch.teacher_chunk_ids, num_chunks)
    use = active & (s_first >= 0) & (t_first >= 0)
    b_idx, c_idx = use.nonzero(as_tuple=True)
    out = (b_idx, s_first[b_idx, c_idx], t_first[b_idx, c_idx], int(active.sum()), int((active & ~use).sum()))
    inputs.cache[CACHE_FIRST_ROWS] = out
    return out


# ---------------------------------------------------------------------------
# objectives
# ---------------------------------------------------------------------------
def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


@dataclass(frozen=True)
class ProjectedKLConfig:
    """:param temperature: tau (1.0, X-Token's NeMo RL and TRL configurations).
    :param weight: multiplies the part. :param reverse: ``KL(P_S || Q)`` on ``W``'s support."""

    temperature: float = 1.0
    weight: float = 1.0
    reverse: bool = False
    requirements: ClassVar[frozenset[Requirement]] = frozenset({"chunks", "projection"})
    unit: ClassVar[Unit] = "active_chunks"

    def __post_init__(self) -> None:
        check_temperature_weight(self.temperature, self.weight)
        _check_bool("reverse", self.reverse)


class _FirstRowObjective(Objective):
    """Shared by the two objectives: the rows, the metrics."""

    supports_projected_logits = True
    _derived: tuple[VocabProjection, torch.device, tuple] | None = None

    def _from_w(self, inputs: DistillInputs, build) -> tuple:
        """``build(W on the student's device)``, kept while the run's ``W`` and device stay
        the same (``W`` is fixed per tokenizer pair; no copy or host sync per step)."""
        proj = _projection(inputs, self.name)
        device = inputs.student_logits.device
        if self._derived is None or self._derived[0] is not proj or self._derived[1] != device:
            self._derived = (proj, device, build(proj.to(device)))
        return self._derived[2]

    def metrics(self, inputs: DistillInputs) -> dict[str, Tensor]:
        """``mass_kept/<name>``: the mean teacher mass ``W`` keeps at the used rows
        (``xtoken_hybrid``: on the one-to-one pairs); ``excluded/<name>``: active chunks
        not used (no mapped mass, or no token on one side)."""
        return dict(inputs.cache.get(f"metrics.{self.name}", {}))

    def _run(self, inputs: DistillInputs, target_of, row_fn, target_width: int) -> Tensor:
        b_idx, s_pos, t_pos, _, n_missing = chunk_first_rows(inputs, self.name)
        tau = float(self.config.temperature)
        loss, stat, valid = row_divergence(
            inputs.student_logits, inputs.teacher_logits, b_idx, s_pos, t_pos,
            target_of=target_of, row_fn=row_fn, coef=tau * tau, target_width=target_width,
        )
        mass = stat.float().mean() if stat.numel() else torch.zeros((), device=stat.device)
        excluded = (~valid).sum() + n_missing
        inputs.cache[f"metrics.{self.name}"] = {f"mass_kept/{self.name}": mass, f"excluded/{self.name}": excluded.float()}
        return loss.float() if loss.dtype != torch.float64 else loss


class ProjectedKL(_FirstRowObjective):
    """P-KL at chunk-first positions: ``KL(Q || P_S) * tau^2`` summed over active chunks."""

    name = "projected_kl"

    def __init__(self, **config) -> None:
        self.config = ProjectedKLConfig(**config)

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        width_s = inputs.student_logits.shape[2]

        def support_of(w: VocabProjection) -> Tensor:
            support = torch.zeros(width_s, dtype=torch.bool, device=w.indices.device)
            support[w.indices] = True
            return support

        proj, support = self._from_w(inputs, lambda w: (w, support_of(w)))
        tau = float(self.config.temperature)
        v_t, v_s = proj.shape

        def target_of(z_t: Tensor):
            p_t = torch.softmax(z_t / tau, dim=-1)[:, :v_t]  # ids past the tokenizer's map nowhere
            raw = proj.project_rows(p_t).to(z_t.dtype)
            if v_s < width_s:
                raw = torch.nn.functional.pad(raw, (0, width_s - v_s))
            mass = raw.sum(-1)
            valid = mass > MIN_MAPPED_MASS
            return raw / mass.clamp_min(MIN_MAPPED_MASS)[:, None], valid, mass

        row_fn = functools.partial(
            projected_kl_rows, temperature=tau, reverse=self.config.reverse, support=support if self.config.reverse else None
        )
        return {self.name: self._run(inputs, target_of, row_fn, int(proj.values.numel()))}


@dataclass(frozen=True)
class HybridKLConfig:
    """:param temperature: tau (1.0, as ``projected_kl``). :param weight: multiplies the part.
    :param reverse: reverse KL on the pairs. :param match_threshold: the smallest ``W``
    weight that pairs a teacher token with its top student token (0.6, NeMo RL's relaxed
    rule; 1.0: GOLD's strict match). :param uncommon_topk: the L1 term compares this many
    largest unmatched probabilities at most (8192, NeMo RL)."""

    temperature: float = 1.0
    weight: float = 1.0
    reverse: bool = False
    match_threshold: float = 0.6
    uncommon_topk: int = 8192
    requirements: ClassVar[frozenset[Requirement]] = frozenset({"chunks", "projection"})
    unit: ClassVar[Unit] = "active_chunks"

    def __post_init__(self) -> None:
        check_temperature_weight(self.temperature, self.weight)
        _check_bool("reverse", self.reverse)
        m = self.match_threshold
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m <= 1:
            raise ValueError(f"match_threshold must be a number in (0, 1], got {m!r}")
        k = self.uncommon_topk
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"uncommon_topk must be an int >= 1, got {k!r}")


class XTokenHybrid(_FirstRowObjective):
    """H-KL at chunk-first positions: KL on ``W``'s one-to-one pairs + sorted L1 on the rest."""

    name = "xtoken_hybrid"

    def __init__(self, **config) -> None:
        self.config = HybridKLConfig(**config)

    def _partition(self, proj: VocabProjection, width_t: int, width_s: int) -> tuple[Tensor, ...]:
        """``(teacher_ids, student_ids, teacher_unmatched, student_unmatched)``."""
        t_ids, s_ids = one_to_one_pairs(proj, threshold=float(self.config.match_threshold))
        t_unm = torch.ones(width_t, dtype=torch.bool, device=t_ids.device)
        s_unm = torch.ones(width_s, dtype=torch.bool, device=s_ids.device)
        t_unm[t_ids], s_unm[s_ids] = False, False
        return t_ids, s_ids, t_unm.nonzero(as_tuple=True)[0], s_unm.nonzero(as_tuple=True)[0]

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        widths = (inputs.teacher_logits.shape[2], inputs.student_logits.shape[2])
        t_ids, s_ids, t_unm, s_unm = self._from_w(inputs, lambda w: self._partition(w, *widths))
        tau = float(self.config.temperature)

        def target_of(z_t: Tensor):
            log_pt = torch.log_softmax(z_t / tau, dim=-1)
            matched = log_pt[:, t_ids].exp().sum(-1)
            return log_pt, torch.ones_like(matched, dtype=torch.bool), matched

        row_fn = functools.partial(
            hybrid_kl_rows, temperature=tau, teacher_ids=t_ids, student_ids=s_ids, teacher_unmatched=t_unm,
            student_unmatched=s_unm, uncommon_topk=int(self.config.uncommon_topk), reverse=self.config.reverse,
        )
        return {self.name: self._run(inputs, target_of, row_fn, 0)}


@hookimpl
def tide_plugin_objectives() -> list[PluginSpec]:
    return [
        PluginSpec(
            name="projected_kl",
            factory=ProjectedKL,
            summary="P-KL at chunk-first positions: KL(P_T W renormalised || P_S) * tau^2 over active chunks",
            config_cls=ProjectedKLConfig,
        ),
        PluginSpec(
            name="xtoken_hybrid",
            factory=XTokenHybrid,
            summary="H-KL at chunk-first positions: KL on W's one-to-one pairs + sorted-probability L1 on the rest",
            config_cls=HybridKLConfig,
        ),
    ]
