"""Teacher adapters (docs/method.md#teacher-adapters, docs/method.md#compdemo): frozen, no NaN from padding, batched views ==
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

V_T, MASK_T, EOS_T = 61, 60, 59


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
    extra = {"block_size": 4, "eos_token_id": EOS_T} if name == "block" else {}
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
    kw = {"mask_token_id": MASK_T, "block_size": 4, "block_padding": "blocked"}
    a = tide_plugin.get_teacher("block", model=model, **kw)(batch)
    wedlm = tide_plugin.get_teacher("wedlm", model=model, **kw)
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
    # the noised student ids, read bidirectionally: equal to the model on x_t with a full
    # 4D mask, and not to the model on the clean ids (a teacher fed x0 would pass a shape check)
    full = torch.ones(2, 1, 8, 8, dtype=torch.bool)
    with torch.no_grad():
        on_xt = model(input_ids=xt, attention_mask=full).logits
        on_x0 = model(input_ids=x0, attention_mask=full).logits
    torch.testing.assert_close(logits.float(), on_xt.float(), atol=2e-5, rtol=1e-4)
    assert not torch.allclose(logits.float(), on_x0.float(), atol=1e-3)


def test_config_errors_name_the_value():
    model = tiny_qwen3(V_T, seed=0)
    with pytest.raises(ValueError, match=r"mask_token_id 999 is outside.*\[0, 61\)"):
        tide_plugin.get_teacher("bidirectional", model=model, mask_token_id=999)
    with pytest.raises(ValueError, match="'float8'"):
        tide_plugin.get_teacher("bidirectional", model=model, dtype="float8")
    with pytest.raises(ValueError, match="'yx'"):
        tide_plugin.get_teacher("block", model=model, concat_order="yx")
    with pytest.warns(UserWarning, match="no EOS id is known .* padded to a block multiple with blocked keys"):
        fallback = tide_plugin.get_teacher("block", model=model)  # the tiny config has no eos_token_id
    assert fallback.block_padding == "blocked" and fallback.eos_token_id is None
    with pytest.raises(ValueError, match=r"eos_token_id 99 is outside the teacher vocabulary \[0, 61\)"):
        tide_plugin.get_teacher("block", model=model, eos_token_id=99)
    with pytest.raises(ValueError, match="block_padding 'pad' is not one of"):
        tide_plugin.get_teacher("block", model=model, block_padding="pad")
    with pytest.raises(ValueError, match="mask_form 'list' is not one of"):
        tide_plugin.get_teacher("block", model=model, mask_form="list", eos_token_id=EOS_T)
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


# ------------------------------------------------------------------------------------------
# Pipeline B as the reference: block-EOS padding of the teacher, visible to it (docs/method.md#noising, docs/method.md#teacher-adapters)


def _plain_block_mask(length: int, block: int, x0_first: bool) -> torch.Tensor:
    """docs/method.md#student-forward's mask over ``2 * length`` positions, written position by position."""
    allowed = torch.zeros(2 * length, 2 * length, dtype=torch.bool)
    for q in range(2 * length):
        for k in range(2 * length):
            q_x0, k_x0 = (q < length) == x0_first, (k < length) == x0_first
            bq, bk = (q % length) // block, (k % length) // block
            allowed[q, k] = (q_x0 == k_x0 and bq == bk) or (not q_x0 and k_x0 and bk < bq) or (q_x0 and k_x0 and bk <= bq)
    return allowed


def _reference_teacher_logits(model, rows_y0, rows_yt, block, pad_id):
    """The reference's Pipeline B teacher call, written plainly: each teacher row padded
    with EOS to a block multiple (real tokens), batch padding blocked as keys and
    queries, a float mask handed over as a dict, positions [0..L-1, 0..L-1], logits
    of the x_t half (WeDLM's x0_xt order)."""
    padded = []
    for y0, yt in zip(rows_y0, rows_yt):
        extra = (-len(y0)) % block
        padded.append((y0 + [EOS_T] * extra, yt + [EOS_T] * extra))
    L = max(len(y0) for y0, _ in padded)
    y0 = torch.full((len(padded), L), pad_id)
    yt = torch.full((len(padded), L), pad_id)
    real = torch.zeros(len(padded), L, dtype=torch.bool)
    for j, (a, b) in enumerate(padded):
        y0[j, : len(a)], yt[j, : len(b)], real[j, : len(a)] = torch.tensor(a), torch.tensor(b), True
    neg = torch.finfo(torch.float32).min
    mask = torch.zeros(len(padded), 1, 2 * L, 2 * L).masked_fill(~_plain_block_mask(L, block, True), neg)
    pad2 = ~torch.cat([real, real], dim=1)
    mask = mask.masked_fill(pad2[:, None, None, :], neg).masked_fill(pad2[:, None, :, None], neg)
    pos = torch.arange(L).expand(len(padded), L)
    with torch.no_grad():
        out = model(input_ids=torch.cat([y0, yt], dim=1), attention_mask={"full_attention": mask, "sliding_attention": mask},
                    position_ids=torch.cat([pos, pos], dim=1))
    return out.logits[:, L:]


def _teacher_rows(seed):
    g = torch.Generator().manual_seed(seed)
    lengths = [10, 6]  # block 4: rows end inside their last block; the batch pads row 2
    y0 = [torch.randint(0, EOS_T, (n,), generator=g).tolist() for n in lengths]
    yt = [[MASK_T if torch.rand(1, generator=g).item() < 0.5 else t for t in row] for row in y0]
    return y0, yt


def _teacher_batch(y0, yt, pad_id=0):
    L = max(len(r) for r in y0)
    ids = torch.full((len(y0), L), pad_id)
    noisy = torch.full((len(y0), L), pad_id)
    valid = torch.zeros(len(y0), L, dtype=torch.bool)
    for j, (a, b) in enumerate(zip(y0, yt)):
        ids[j, : len(a)], noisy[j, : len(b)], valid[j, : len(a)] = torch.tensor(a), torch.tensor(b), True
    s = torch.zeros(len(y0), 4, dtype=torch.long)
    return DistillBatch(pipeline="shared", input_ids=s, labels=s, attention_mask=s.bool(), teacher_input_ids=ids,
                        teacher_attention_mask=valid, teacher_noisy_ids=noisy[None])


def test_block_teacher_logits_equal_the_reference_with_visible_eos_padding():
    model = tiny_qwen3(V_T, seed=11, eos_token_id=EOS_T, attn_implementation="sdpa")
    y0, yt = _teacher_rows(seed=12)
    batch = _teacher_batch(y0, yt)
    teacher = tide_plugin.get_teacher("wedlm", model=model, mask_token_id=MASK_T, block_size=4)
    assert teacher.eos_token_id == EOS_T and teacher.config.block_padding == "eos"
    ours = teacher(batch)
    ref = _reference_teacher_logits(model, y0, yt, block=4, pad_id=0)
    for j, row in enumerate(y0):
        torch.testing.assert_close(ours[j, : len(row)], ref[j, : len(row)], atol=1e-5, rtol=1e-5)
    # the last block sees the EOS tokens: with blocked padding it differs there, and only there
    blocked = tide_plugin.get_teacher("wedlm", model=model, mask_token_id=MASK_T, block_size=4, block_padding="blocked")(batch)
    for j, row in enumerate(y0):
        last = len(row) // 4 * 4
        torch.testing.assert_close(blocked[j, :last], ours[j, :last], atol=1e-5, rtol=1e-5)
        assert (blocked[j, last : len(row)] - ours[j, last : len(row)]).abs().max() > 1e-3


def _dict_only_model(seed):
    from transformers import Qwen3ForCausalLM

    class DictMaskOnlyQwen3(Qwen3ForCausalLM):
        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            if not isinstance(attention_mask, dict):
                raise TypeError(f"this model takes its mask as {{'full_attention': mask}}, got {type(attention_mask).__name__}")
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    plain = tiny_qwen3(V_T, seed=seed, eos_token_id=EOS_T)
    model = DictMaskOnlyQwen3(plain.config)
    model.load_state_dict(plain.state_dict())
    model.config._attn_implementation = plain.config._attn_implementation
    return model.eval(), plain


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_block_teacher_hands_a_dict_mask_to_a_model_that_takes_only_that(impl):
    model, plain = _dict_only_model(seed=13)
    set_attn_implementation(model, impl), set_attn_implementation(plain, impl)
    batch = _teacher_batch(*_teacher_rows(seed=14))
    teacher = tide_plugin.get_teacher("wedlm", model=model, mask_token_id=MASK_T, block_size=4)
    assert teacher.mask_as_dict
    got = teacher(batch)
    tensor_form = tide_plugin.get_teacher("wedlm", model=plain, mask_token_id=MASK_T, block_size=4, mask_form="tensor")
    assert not tensor_form.mask_as_dict
    torch.testing.assert_close(got, tensor_form(batch), atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="takes its mask as"):
        tide_plugin.get_teacher("wedlm", model=model, mask_token_id=MASK_T, block_size=4, mask_form="tensor")(batch)
