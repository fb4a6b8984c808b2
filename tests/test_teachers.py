"""Teacher adapters (SPEC 2.2, 4): frozen, no NaN from padding, batched views ==
sequential views, both block concat orders."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import tide_plugin
from tide_plugin.batch import DistillBatch
from tide_plugin.bd3lm import block_diffusion_logits
from tide_plugin.teachers.base import merge_views
from tide_plugin.tiny import set_attn_implementation, tiny_qwen3, tiny_qwen3_moe

V_T, MASK_T = 61, 60


def _batch(b=3, length=10, views=1, seed=0, pad_row=True) -> DistillBatch:
    g = torch.Generator().manual_seed(seed)
    y0 = torch.randint(0, MASK_T, (b, length), generator=g)
    valid = torch.ones(b, length, dtype=torch.bool)
    if pad_row:
        valid[1, length - 4 :] = False
        y0[1, length - 4 :] = 0
    noisy = torch.stack(
        [torch.where((torch.rand(b, length, generator=g) < 0.5) & valid, MASK_T, y0) for _ in range(views)]
    )
    view_index = torch.randint(0, views, (b, length), generator=g) if views > 1 else None
    ids = torch.zeros(b, 4, dtype=torch.long)
    return DistillBatch(
        pipeline="cross",
        input_ids=ids,
        labels=ids,
        attention_mask=torch.ones_like(ids, dtype=torch.bool),
        teacher_input_ids=y0,
        teacher_attention_mask=valid,
        teacher_noisy_ids=noisy,
        teacher_view_index=view_index,
    )


@pytest.fixture(scope="module")
def moe():
    return tiny_qwen3_moe(V_T, attn_implementation="sdpa", seed=3)


def test_bidirectional_is_frozen_and_registered(moe):
    teacher = tide_plugin.get_teacher("bidirectional", model=moe, mask_token_id=MASK_T)
    assert not moe.training and not any(p.requires_grad for p in moe.parameters())
    teacher.train(True)
    assert not moe.training
    logits = teacher(_batch())
    assert logits.shape == (3, 10, V_T) and not logits.requires_grad
    assert tide_plugin.get_registry().resolve("teacher", "llada").name == "bidirectional"


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_bidirectional_padding_no_nan_and_matches_unpadded(moe, impl):
    set_attn_implementation(moe, impl)
    try:
        teacher = tide_plugin.get_teacher("bidirectional", model=moe, mask_token_id=MASK_T)
        batch = _batch()
        logits = teacher(batch)
        assert torch.isfinite(logits).all()
        y = batch.teacher_noisy_ids[0, 1:2, :6]
        with torch.no_grad():  # reference: the unpadded row alone, no mask at all = full attention
            zero = torch.zeros(1, 1, 6, 6)
            alone = moe(input_ids=y, attention_mask=zero, position_ids=torch.arange(6)[None]).logits
        torch.testing.assert_close(logits[1, :6], alone[0], atol=2e-5, rtol=1e-4)
    finally:
        set_attn_implementation(moe, "sdpa")


def test_bidirectional_bf16_no_nan(moe):
    model = tiny_qwen3_moe(V_T, attn_implementation="eager", seed=3)
    teacher = tide_plugin.get_teacher("bidirectional", model=model, mask_token_id=MASK_T, dtype="bfloat16")
    logits = teacher(_batch())
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


@pytest.mark.parametrize("name", ["bidirectional", "block"])
def test_views_batched_equal_sequential_and_merge_by_index(name, moe):
    model = moe if name == "bidirectional" else tiny_qwen3(V_T, seed=5)
    extra = {"block_size": 4} if name == "block" else {}
    batch = _batch(views=2, length=12, seed=4)
    batched = tide_plugin.get_teacher(name, model=model, mask_token_id=MASK_T, **extra)(batch)
    sequential = tide_plugin.get_teacher(name, model=model, mask_token_id=MASK_T, sequential_views=True, **extra)(batch)
    torch.testing.assert_close(batched, sequential, atol=2e-5, rtol=1e-4)
    # each position's logits come from the view its index names
    teacher = tide_plugin.get_teacher(name, model=model, mask_token_id=MASK_T, **extra)
    singles = []
    for v in range(2):
        one = DistillBatch(**{**batch.__dict__, "teacher_noisy_ids": batch.teacher_noisy_ids[v : v + 1], "teacher_view_index": None})
        singles.append(teacher(one))
    idx = batch.teacher_view_index
    expected = torch.where((idx == 1)[..., None], singles[1], singles[0])
    torch.testing.assert_close(batched, expected, atol=2e-5, rtol=1e-4)
    assert (idx == 1).any() and (idx == 0).any()


def test_merge_views_rejects_bad_index():
    logits = torch.zeros(2, 1, 3, 5)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        merge_views(logits, torch.tensor([[0, 2, 1]]))


def test_block_teacher_concat_orders_and_padding_to_block():
    model = tiny_qwen3(V_T, seed=6)
    batch = _batch(length=10, seed=8)  # 10 is not a multiple of the block size 4
    a = tide_plugin.get_teacher("block", model=model, mask_token_id=MASK_T, block_size=4)(batch)
    wedlm = tide_plugin.get_teacher("wedlm", model=model, mask_token_id=MASK_T, block_size=4)
    assert wedlm.config.concat_order == "x0_xt"
    b = wedlm(batch)
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    assert torch.isfinite(a).all() and a.shape == (3, 10, V_T)
    # the padded-to-12 forward equals the plain block-diffusion forward at the real positions
    y0 = torch.nn.functional.pad(batch.teacher_input_ids, (0, 2))
    yt = torch.nn.functional.pad(batch.teacher_noisy_ids[0], (0, 2))
    valid = torch.nn.functional.pad(batch.teacher_attention_mask, (0, 2), value=False)
    with torch.no_grad():
        ref = block_diffusion_logits(model, yt, y0, block_size=4, attention_mask=valid)
    torch.testing.assert_close(a, ref[:, :10], atol=2e-5, rtol=1e-4)


def test_same_pipeline_reads_student_ids():
    model = tiny_qwen3_moe(V_T, seed=1)
    x0 = torch.randint(0, MASK_T, (2, 8))
    xt = torch.where(torch.rand(2, 8) < 0.5, MASK_T, x0)
    batch = DistillBatch(
        pipeline="same", input_ids=x0, labels=x0, attention_mask=torch.ones(2, 8, dtype=torch.bool), noisy_input_ids=xt
    )
    logits = tide_plugin.get_teacher("bidirectional", model=model, mask_token_id=MASK_T)(batch)
    assert logits.shape == (2, 8, V_T)


def test_config_errors_name_the_value():
    model = tiny_qwen3(V_T, seed=0)
    with pytest.raises(ValueError, match=r"mask_token_id 999 is outside.*\[0, 61\)"):
        tide_plugin.get_teacher("bidirectional", model=model, mask_token_id=999)
    with pytest.raises(ValueError, match="'float8'"):
        tide_plugin.get_teacher("bidirectional", model=model, dtype="float8")
    with pytest.raises(ValueError, match="'yx'"):
        tide_plugin.get_teacher("block", model=model, concat_order="yx")
    batch = _batch()
    batch.teacher_noisy_ids = None
    with pytest.raises(ValueError, match="noise"):
        tide_plugin.get_teacher("bidirectional", model=model)(batch)


def test_4bit_needs_bitsandbytes():
    model = tiny_qwen3(V_T, seed=0)
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(ImportError, match="bitsandbytes"):
            tide_plugin.get_teacher("bidirectional", model=model, load_in_4bit=True)
    else:
        with pytest.raises(ValueError, match="checkpoint path"):
            tide_plugin.get_teacher("bidirectional", model=model, load_in_4bit=True)


def test_teacher_loaded_from_a_checkpoint_directory(tmp_path):
    tiny_qwen3_moe(V_T, seed=9).save_pretrained(tmp_path / "teacher")
    teacher = tide_plugin.get_teacher("bidirectional", model=str(tmp_path / "teacher"), mask_token_id=MASK_T,
                                      dtype="bfloat16")
    assert next(teacher.model.parameters()).dtype == torch.bfloat16 and not teacher.model.training
    assert torch.isfinite(teacher(_batch()).float()).all()
