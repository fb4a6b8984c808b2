"""Model side of the fused output layer (tide_plugin.heads, TeacherAdapter.projected_logits):
hidden states read through the model's own forward equal the full logits once projected,
and the step's gradients (tied embeddings included) equal today's."""

from __future__ import annotations

import pytest
import torch

import tide_plugin
from tide_plugin.batch import DistillBatch, DistillInputs
from tide_plugin.bd3lm import bd3lm_ce, block_diffusion_logits
from tide_plugin.heads import block_diffusion_projected, fused_head_problem, logits_as_hidden_states
from tide_plugin.tiny import tiny_qwen3, tiny_qwen3_moe

V_S, V_T = 53, 61
MASK_S, MASK_T = V_S - 1, V_T - 1


def _batch(b=2, length=8, l_t=12, seed=0) -> DistillBatch:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, MASK_S, (b, length), generator=g)
    labels = x0.clone()
    labels[:, :2] = -100
    y0 = torch.randint(0, MASK_T, (b, l_t), generator=g)
    t_valid = torch.ones(b, l_t, dtype=torch.bool)
    t_valid[1, -3:] = False  # a padded teacher row
    chunks = torch.arange(length).expand(b, -1).clone()
    batch = DistillBatch(
        pipeline="cross", input_ids=x0, labels=labels, attention_mask=torch.ones(b, length, dtype=torch.bool),
        teacher_input_ids=y0, teacher_attention_mask=t_valid, student_chunk_ids=chunks,
        teacher_chunk_ids=torch.where(t_valid, torch.arange(l_t) * length // l_t, -1),
        num_chunks=torch.full((b,), length),
    )
    batch = tide_plugin.get_collator("noise", mask_id=MASK_S, teacher_mask_id=MASK_T, seed=seed)(batch)
    return tide_plugin.get_collator("comp_demo", demo_ratio=0.5, seed=seed)(batch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("teacher_name", ["bidirectional", "block"])
def test_fused_step_equals_full_logits_step(dtype, teacher_name):
    """CE + CALM + TIDAL-CALM from projected rows: same loss, same gradient for every
    student parameter (the output weight is the tied embedding matrix)."""
    student = tiny_qwen3(V_S, seed=1).to(dtype)
    assert student.get_output_embeddings().weight is student.get_input_embeddings().weight
    teacher_net = tiny_qwen3_moe(V_T, seed=2) if teacher_name == "bidirectional" else tiny_qwen3(V_T, seed=3)
    extra = {"block_size": 4} if teacher_name == "block" else {}
    teacher = tide_plugin.get_teacher(teacher_name, model=teacher_net.to(dtype), mask_token_id=MASK_T, **extra)
    objective = tide_plugin.get_objective("calm+tidal_calm")
    batch = _batch()
    assert batch.teacher_noisy_ids.shape[0] == 2 and batch.chunk_active.any()

    def step(fused: bool):
        student.zero_grad(set_to_none=True)
        if fused:
            s_logits = block_diffusion_projected(student, batch.noisy_input_ids, batch.input_ids, block_size=4,
                                                 attention_mask=batch.attention_mask)
            t_logits = teacher.projected_logits(batch)
        else:
            s_logits = block_diffusion_logits(student, batch.noisy_input_ids, batch.input_ids, block_size=4,
                                              attention_mask=batch.attention_mask)
            t_logits = teacher(batch)
        ce = bd3lm_ce(s_logits, batch.input_ids, masked=batch.masked, maskable=batch.labels != -100,
                      weight=batch.ce_time_weight)
        parts = objective(DistillInputs(batch=batch, student_logits=s_logits, teacher_logits=t_logits, progress=0.3))
        loss = ce + sum(parts.values())
        loss.backward()
        return loss.detach().float(), {n: p.grad.float().clone() for n, p in student.named_parameters()}

    want, g_want = step(False)
    got, g_got = step(True)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(got, want, **tol)
    assert g_got.keys() == g_want.keys()
    for name in g_want:
        scale = g_want[name].abs().max().clamp_min(1e-6)
        err = (g_got[name] - g_want[name]).abs().max() / scale
        assert err < (1e-4 if dtype == torch.float32 else 6e-2), (name, float(err))


def test_projected_logits_equal_full_logits():
    student = tiny_qwen3(V_S, seed=4)
    teacher = tide_plugin.get_teacher("bidirectional", model=tiny_qwen3_moe(V_T, seed=5), mask_token_id=MASK_T)
    batch = _batch(seed=6)
    s = block_diffusion_projected(student, batch.noisy_input_ids, batch.input_ids, block_size=4,
                                  attention_mask=batch.attention_mask)
    full = block_diffusion_logits(student, batch.noisy_input_ids, batch.input_ids, block_size=4,
                                  attention_mask=batch.attention_mask)
    torch.testing.assert_close(s.materialize(), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(teacher.projected_logits(batch).materialize(), teacher(batch), rtol=1e-5, atol=1e-5)
    # the head is back in place afterwards
    assert student(input_ids=batch.input_ids).logits.shape[-1] == V_S


def test_head_problems_are_named_and_the_head_is_restored_on_error():
    model = tiny_qwen3(V_S, seed=7)
    assert fused_head_problem(model) is None
    model.config.final_logit_softcapping = 30.0
    assert "final_logit_softcapping=30.0" in fused_head_problem(model)
    teacher = tide_plugin.get_teacher("bidirectional", model=model, mask_token_id=MASK_S)
    assert teacher.projected_logits(_batch()) is None  # the trainer keeps full logits then
    model.config.final_logit_softcapping = None
    with pytest.raises(RuntimeError, match="boom"), logits_as_hidden_states(model):
        raise RuntimeError("boom")
    assert "forward" not in model.get_output_embeddings().__dict__
