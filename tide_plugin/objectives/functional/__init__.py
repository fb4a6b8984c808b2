"""TIDE losses as pure functions (docs/method.md#objectives).

Every function takes tensors positionally and hyperparameters keyword-only, and
returns a float32 scalar (or a float32 tensor for the helpers). All probability
arithmetic is done in float32 (float64 when the inputs are float64, which the
gradient checks use), whatever the logits' dtype.

Memory. At 150k vocabularies the logits dominate memory, so the token losses and
:func:`chunk_log_probs` never materialise a float32 copy of the logits:

- only the rows that count (masked positions, aligned pairs, tokens of a chunk)
  are read, ``ROW_CHUNK_ELEMENTS`` float32 elements' worth of rows at a time;
- the token losses are custom :class:`torch.autograd.Function` s that compute,
  row chunk by row chunk, the loss *and* its exact gradient with respect to the
  student logits, store that gradient in the logits' dtype, and hand it back
  (scaled by ``grad_output``) in backward;
- :func:`chunk_log_probs` keeps one float32 ``logsumexp`` per used row and
  rebuilds ``onehot - softmax`` row chunk by row chunk in backward.

Extra peak memory is therefore one gradient-sized buffer in the logits' dtype
(which backward has to produce anyway) plus a few float32 row chunks. The teacher
side never receives a gradient (the teacher is frozen; docs/method.md#teacher-adapters).

The functions live in :mod:`._common` (constants, checks, row chunking),
:mod:`.token` and :mod:`.chunk`; this module is their public face. Tests that
shrink the row chunks patch ``tide_plugin.objectives.functional._common.ROW_CHUNK_ELEMENTS``.
"""

from __future__ import annotations

from ._common import (  # noqa: F401  (helpers the fused output layer shares)
    _TOKEN_MODES,
    PROB_CLAMP,
    ROW_CHUNK_ELEMENTS,
    ROW_CHUNK_ELEMENTS_ACCELERATOR,
    _check_choice,
    _check_temperature,
    _per_example,
    _rows_per_chunk,
    _shared_vocab,
    _work_dtype,
)
from .chunk import calm, chunk_log_probs, tidal_calm
from .token import aligned_rows, check_divergence_inputs, masked_rows, tidal_kl, token_divergence, token_kl

__all__ = [
    "aligned_rows",
    "calm",
    "chunk_log_probs",
    "masked_rows",
    "tidal_calm",
    "tidal_kl",
    "token_divergence",
    "token_kl",
]

