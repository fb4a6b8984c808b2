"""TIDE losses as pure functions (docs/method.md#objectives).

Every function takes tensors positionally and hyperparameters keyword-only, and
returns a float32 scalar (or a float32 tensor for the helpers). All probability
arithmetic is done in float32 (float64 when the inputs are float64, which the
gradient checks use), whatever the logits' dtype.

Memory. At 150k vocabularies the logits dominate memory, so no function here builds
a float32 copy of them: the token losses run on the row divergence engine
(:mod:`tide_plugin.objectives.rows`: the divergence is a pure function of row
log-probs, its exact gradient is taken by autograd a chunk of rows at a time in the
forward pass and handed back, scaled, in backward), and :func:`chunk_log_probs` on the
gold-token log-prob engine (:mod:`tide_plugin.logits`). Both read only the rows that
count (masked positions, aligned pairs, tokens of a chunk), ``ROW_CHUNK_ELEMENTS``
float32 elements' worth of rows at a time, and accept plain logits ``[b, L, V]`` or
:class:`~tide_plugin.logits.ProjectedLogits` alike. The teacher side never receives a
gradient (the teacher is frozen; docs/method.md#teacher-adapters).

Every loss returns the mean over its unit by default (the documented values);
``reduction="sum"`` returns the sum over it, what the objectives hand the trainer
(docs/method.md#normalisation).

The functions live in :mod:`._common` (constants, checks), :mod:`.token` and
:mod:`.chunk`; this module is their public face. Tests that shrink the row chunks
patch ``tide_plugin.logits.ROW_CHUNK_ELEMENTS``.
"""

from __future__ import annotations

from ...logits import ROW_CHUNK_ELEMENTS, ROW_CHUNK_ELEMENTS_ACCELERATOR
from ._common import PROB_CLAMP, REDUCTIONS, Reduction
from .chunk import calm, chunk_log_probs, tidal_calm
from .token import (
    DIVERGENCES,
    TokenDivergenceFn,
    aligned_rows,
    check_divergence_inputs,
    forward_kl,
    masked_rows,
    reverse_kl,
    tidal,
    tidal_kl,
    token_divergence,
    token_kl,
)

__all__ = [
    "DIVERGENCES",
    "PROB_CLAMP",
    "REDUCTIONS",
    "ROW_CHUNK_ELEMENTS",
    "ROW_CHUNK_ELEMENTS_ACCELERATOR",
    "Reduction",
    "TokenDivergenceFn",
    "aligned_rows",
    "check_divergence_inputs",
    "forward_kl",
    "reverse_kl",
    "tidal",
    "calm",
    "chunk_log_probs",
    "masked_rows",
    "tidal_calm",
    "tidal_kl",
    "token_divergence",
    "token_kl",
]

