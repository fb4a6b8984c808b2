"""The BD3LM attention mask (docs/method.md#student-forward) against a plain rule-by-rule loop."""

from __future__ import annotations

import pytest
import torch

from tide_plugin.bd3lm import (
    block_diffusion_mask,
    block_diffusion_position_ids,
    to_additive,
    with_key_padding,
)


def plain_mask(length: int, block: int, order: str) -> torch.Tensor:
    m = torch.zeros(2 * length, 2 * length, dtype=torch.bool)
    for q in range(2 * length):
        for k in range(2 * length):
            q_first, k_first = q < length, k < length
            q_xt = q_first if order == "xt_x0" else not q_first
            k_xt = k_first if order == "xt_x0" else not k_first
            bq, bk = (q % length) // block, (k % length) // block
            if q_xt == k_xt and bq == bk:
                m[q, k] = True
            elif q_xt and not k_xt and bk < bq:
                m[q, k] = True
            elif not q_xt and not k_xt and bk <= bq:
                m[q, k] = True
    return m


@pytest.mark.parametrize("order", ["xt_x0", "x0_xt"])
@pytest.mark.parametrize(("length", "block"), [(8, 4), (12, 4), (6, 3), (5, 5), (4, 1), (7, 32)])
def test_mask_matches_plain_rules(length, block, order):
    assert torch.equal(block_diffusion_mask(length, block, order=order), plain_mask(length, block, order))


def test_xt_half_never_sees_its_own_clean_block():
    m = block_diffusion_mask(8, 4)
    # x_t token 5 (block 1) must not see x0 tokens 4..7 (its own block, clean) nor later blocks.
    assert not m[5, 8 + 4 : 16].any()
    assert m[5, 8:12].all()  # earlier clean block visible


def test_bad_arguments():
    with pytest.raises(ValueError, match="concat order 'xt_xt' is not one of"):
        block_diffusion_mask(4, 2, order="xt_xt")
    with pytest.raises(ValueError, match=r"length \(0\) and block_size \(2\) must be positive"):
        block_diffusion_mask(0, 2)


def test_key_padding_blocks_pad_keys_and_keeps_rows_finite():
    m = torch.block_diag(torch.ones(2, 2), torch.ones(2, 2)).bool()  # two blocks of 2
    valid = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    full = with_key_padding(m, valid)
    assert full.shape == (2, 1, 4, 4)
    assert not full[0, 0, :, 2:].logical_and(~torch.eye(4, dtype=torch.bool)[:, 2:]).any()  # pad keys blocked
    assert full[0, 0, 2:].equal(torch.eye(4, dtype=torch.bool)[2:])  # rows with no valid key see only themselves
    assert full[1, 0].equal(m)
    add = to_additive(full, torch.float32)
    scores = torch.randn(2, 1, 4, 4) + add
    assert torch.isfinite(scores.softmax(-1)).all()


def test_position_ids():
    assert block_diffusion_position_ids(2, 3).tolist() == [[0, 1, 2, 0, 1, 2]] * 2
