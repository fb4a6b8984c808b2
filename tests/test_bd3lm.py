"""BD3LM student forward (docs/method.md#student-forward) and its CE term, against plain implementations."""

from __future__ import annotations

import pytest
import torch

from tide_plugin.bd3lm import (
    bd3lm_ce,
    block_attention_mask,
    block_diffusion_logits,
)
from tide_plugin.tiny import set_attn_implementation, tiny_qwen3, tiny_qwen3_moe

V, B = 53, 4
MASK_ID = V - 1


def _ids(b: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, V - 1, (b, length), generator=g)
    masked = torch.rand(b, length, generator=g) < 0.5
    return torch.where(masked, MASK_ID, x0), x0


def _reference_logits(model, xt: torch.Tensor, x0: torch.Tensor, block: int) -> torch.Tensor:
    """Plain per-block loop: the x_t block k sees the clean blocks before it and itself,
    and the clean prefix attends block-causally - so block k's logits are the last
    block of ``x0[:kB] ⊕ x_t[kB:(k+1)B]`` under a block-causal mask built by loops."""
    b, length = x0.shape
    out = torch.empty(b, length, model.config.vocab_size)
    for k in range(length // block):
        seq = torch.cat([x0[:, : k * block], xt[:, k * block : (k + 1) * block]], dim=1)
        n = seq.shape[1]
        add = torch.full((n, n), torch.finfo(torch.float32).min)
        for q in range(n):
            for kv in range(n):
                if kv // block <= q // block:
                    add[q, kv] = 0.0
        pos = torch.arange(n).unsqueeze(0).expand(b, -1)
        logits = model(input_ids=seq, attention_mask=add[None, None].expand(b, 1, n, n), position_ids=pos).logits
        out[:, k * block : (k + 1) * block] = logits[:, -block:]
    return out


@pytest.fixture(scope="module")
def student():
    return tiny_qwen3(V, hidden_size=32, num_layers=2, attn_implementation="eager", seed=1)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_xt_half_logits_match_per_block_loop(student, impl):
    xt, x0 = _ids(2, 3 * B)
    set_attn_implementation(student, "eager")
    with torch.no_grad():
        ref = _reference_logits(student, xt, x0, B)
        set_attn_implementation(student, impl)
        got = block_diffusion_logits(student, xt, x0, block_size=B)
    set_attn_implementation(student, "eager")
    assert got.shape == (2, 3 * B, V)
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)


def test_eager_additive_equals_sdpa_boolean_and_orders_agree(student):
    xt, x0 = _ids(3, 4 * B, seed=3)
    attn = torch.ones(3, 4 * B, dtype=torch.bool)
    attn[1, 3 * B :] = False
    with torch.no_grad():
        set_attn_implementation(student, "sdpa")
        sdpa = block_diffusion_logits(student, xt, x0, block_size=B, attention_mask=attn)
        swapped = block_diffusion_logits(student, xt, x0, block_size=B, attention_mask=attn, order="x0_xt")
        set_attn_implementation(student, "eager")
        eager = block_diffusion_logits(student, xt, x0, block_size=B, attention_mask=attn)
    torch.testing.assert_close(eager, sdpa, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(swapped, sdpa, atol=2e-5, rtol=1e-4)


def test_mask_forms_per_implementation():
    attn = torch.tensor([[True] * 8, [True] * 4 + [False] * 4])
    bool_mask = block_attention_mask(8, B, batch=2, attention_mask=attn, impl="sdpa")
    add = block_attention_mask(8, B, batch=2, attention_mask=attn, impl="eager", dtype=torch.bfloat16)
    assert bool_mask.dtype == torch.bool and bool_mask.shape == (2, 1, 16, 16)
    assert add.dtype == torch.bfloat16 and add.shape == (2, 1, 16, 16)
    assert torch.equal(add == 0, bool_mask)
    # every row may attend something (no all -inf row), pad keys are blocked for real queries
    assert bool_mask.any(-1).all()
    assert not bool_mask[1, 0, :4, 4:8].any() and not bool_mask[1, 0, :4, 12:].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_padding_gives_no_nan_and_valid_logits_match_unpadded(impl, dtype):
    model = tiny_qwen3(V, attn_implementation=impl, seed=2).to(dtype)
    xt, x0 = _ids(2, 3 * B, seed=5)
    attn = torch.ones(2, 3 * B, dtype=torch.bool)
    attn[1, 2 * B :] = False
    xt[1, 2 * B :] = 0
    x0[1, 2 * B :] = 0
    with torch.no_grad():
        padded = block_diffusion_logits(model, xt, x0, block_size=B, attention_mask=attn)
        alone = block_diffusion_logits(model, xt[1:, : 2 * B], x0[1:, : 2 * B], block_size=B)
    assert torch.isfinite(padded.float()).all()
    tol = dict(atol=2e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(padded[1, : 2 * B].float(), alone[0].float(), **tol)


def test_moe_teacher_architecture_and_gradients():
    """The MoE architecture through the block-diffusion forward: logits and the
    gradient of every parameter equal those of the plain per-block loop."""
    model = tiny_qwen3_moe(V, attn_implementation="eager", seed=4)
    xt, x0 = _ids(2, 2 * B)
    probe = torch.randn(2, 2 * B, V, generator=torch.Generator().manual_seed(9))  # a generic scalar of the logits
    params = [p for p in model.parameters() if p.requires_grad]

    ref = _reference_logits(model, xt, x0, B)
    ref_grads = torch.autograd.grad((ref * probe).sum(), params, allow_unused=True)
    set_attn_implementation(model, "sdpa")
    logits = block_diffusion_logits(model, xt, x0, block_size=B)
    grads = torch.autograd.grad((logits * probe).sum(), params, allow_unused=True)

    assert logits.shape == (2, 2 * B, V)
    torch.testing.assert_close(logits, ref, atol=2e-5, rtol=1e-4)
    used = 0
    for p, g, r in zip(params, grads, ref_grads):
        assert (g is None) == (r is None)
        if g is not None:
            torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-3)
            used += int(g.abs().sum() > 0)
    assert used >= len(params) // 2  # most parameters (embeddings, attention, routed experts) get a gradient


def test_length_not_block_multiple_is_rejected(student):
    xt, x0 = _ids(1, B + 1)
    with pytest.raises(ValueError, match="not a multiple of block_size"):
        block_diffusion_logits(student, xt, x0, block_size=B)


# ---- CE term --------------------------------------------------------------------------


def _plain_ce(logits, x0, masked, maskable, w, norm):
    b, length = x0.shape
    rows = []
    for i in range(b):
        s = torch.zeros((), dtype=torch.float32)
        for j in range(length):
            if masked[i, j] and maskable[i, j]:
                lp = torch.log_softmax(logits[i, j].float(), -1)[x0[i, j]]
                s = s - lp * w[i]
        rows.append(s)
    if norm == "token":
        return sum(rows) / max(1, int(maskable.sum()))
    if norm == "sequence":
        return sum(r / max(1, int(maskable[i].sum())) for i, r in enumerate(rows)) / b
    return sum(rows) / b


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm", ["token", "sequence", "batch"])
def test_ce_matches_plain_loop_value_and_gradient(norm, dtype):
    g = torch.Generator().manual_seed(7)
    b, length = 3, 7
    logits = torch.randn(b, length, V, generator=g).to(dtype).requires_grad_(True)
    x0 = torch.randint(0, V, (b, length), generator=g)
    maskable = torch.rand(b, length, generator=g) < 0.8
    maskable[2] = False  # a row with no target
    masked = (torch.rand(b, length, generator=g) < 0.6) & maskable
    t = torch.rand(b, generator=g) * 0.9 + 0.05
    w = 1 / t
    got = bd3lm_ce(logits, x0, masked=masked, maskable=maskable, weight=w, norm=norm)
    (g_got,) = torch.autograd.grad(got, logits)
    ref = _plain_ce(logits, x0, masked, maskable, w, norm)
    (g_ref,) = torch.autograd.grad(ref, logits)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_got.float(), g_ref.float(), atol=1e-6, rtol=1e-3)


def test_ce_empty_mask_is_zero_with_gradient_and_denominator_override():
    logits = torch.randn(2, 4, V, requires_grad=True)
    x0 = torch.randint(0, V, (2, 4))
    none = torch.zeros(2, 4, dtype=torch.bool)
    loss = bd3lm_ce(logits, x0, masked=none, maskable=none)
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None and (logits.grad == 0).all()
    full = torch.ones(2, 4, dtype=torch.bool)
    a = bd3lm_ce(logits, x0, masked=full, maskable=full)
    torch.testing.assert_close(a, _plain_ce(logits, x0, full, full, torch.ones(2), "token"))  # / 8 maskable tokens
    half = bd3lm_ce(logits, x0, masked=full, maskable=full, denominator=16)
    torch.testing.assert_close(half * 2, a)
    (g_a,) = torch.autograd.grad(a, logits)
    (g_half,) = torch.autograd.grad(half, logits)
    torch.testing.assert_close(g_half * 2, g_a)
    # the gradient of the mean CE: (softmax - onehot) / 8 at every position
    plain = (logits.detach().softmax(-1) - torch.nn.functional.one_hot(x0, V)) / 8
    torch.testing.assert_close(g_a, plain, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="'mean'.*token"):
        bd3lm_ce(logits, x0, masked=full, maskable=full, norm="mean")


@pytest.mark.slow
def test_flex_block_mask_matches_sdpa_at_real_positions():
    """flex-attention BlockMask (meant for GPUs; on CPU forward-only, compiled once)."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    model = tiny_qwen3(V, attn_implementation="sdpa", seed=2)
    xt, x0 = _ids(2, 2 * B, seed=11)
    attn = torch.ones(2, 2 * B, dtype=torch.bool)
    attn[1, B + 2 :] = False
    with torch.no_grad():
        ref = block_diffusion_logits(model, xt, x0, block_size=B, attention_mask=attn)
        set_attn_implementation(model, "flex_attention")
        got = block_diffusion_logits(model, xt, x0, block_size=B, attention_mask=attn)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[attn], ref[attn], atol=2e-5, rtol=1e-4)
