"""A student saved in bfloat16 trains in float32 unless the user asks otherwise: one
AdamW step at lr 1e-4 changes every weight that received a gradient (in bfloat16 about
a third of them would keep their value)."""

from __future__ import annotations

import pytest
import torch
import transformers
from helpers.distill import synthetic_rows, tidal_comp_demo_config

from tide_plugin.checkpoints import load_student, training_dtype
from tide_plugin.shipped import demo_assets
from tide_plugin.training import build_trainer
from tide_plugin.training.builders import settle_student_dtype


class _Grads(transformers.TrainerCallback):
    def __init__(self):
        self.grads: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):  # noqa: ARG002
        self.grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}


def _one_step(tmp_path, **overrides):
    # the shipped init, saved in bfloat16, as transformers 5 loads it by default (4.57 would load float32)
    student = load_student(demo_assets("A")["model_name_or_path"], dtype="bfloat16")
    assert {p.dtype for p in student.parameters()} == {torch.bfloat16}
    mask, eos = student.config.mask_token_id, student.config.eos_token_id
    cfg = tidal_comp_demo_config(tmp_path / "run", objective="none", use_comp_demo=False, max_steps=1,
                                 gradient_accumulation_steps=1, learning_rate=1e-4, lr_scheduler_type="constant",
                                 weight_decay=0.0, per_device_train_batch_size=8, **overrides)
    grads = _Grads()
    trainer = build_trainer(cfg, student=student, teacher_model=None, train_dataset=synthetic_rows(8, seed=1),
                            student_mask_id=mask, student_eos_id=eos, callbacks=[grads])
    before = {n: p.detach().float().clone() for n, p in student.named_parameters()}
    trainer.train()
    after = dict(student.named_parameters())
    stuck = moved = 0
    for name, g in grads.grads.items():
        live = g.abs() > 1e-6  # AdamW's first step moves these by about lr
        same = (after[name].detach().float() == before[name]) & live
        stuck += int(same.sum())
        moved += int(live.sum())
    return student, stuck, moved


def test_a_bfloat16_student_trains_in_float32_and_every_update_lands(tmp_path):
    student, stuck, moved = _one_step(tmp_path)
    assert {p.dtype for p in student.parameters()} == {torch.float32}
    assert moved > 100_000 and stuck == 0


def test_asking_for_bfloat16_keeps_it_and_loses_updates(tmp_path):
    """What the float32 default prevents: the same step in bfloat16 leaves many weights as they were."""
    student, stuck, moved = _one_step(tmp_path, dtype="bfloat16")
    assert {p.dtype for p in student.parameters()} == {torch.bfloat16}
    assert stuck > 0.05 * moved


def test_the_line_says_what_the_student_trains_in(tmp_path):
    cfg = tidal_comp_demo_config(tmp_path, objective="none")
    model = torch.nn.Linear(2, 2).to(torch.bfloat16)
    line = settle_student_dtype(model, cfg, saved="bfloat16")
    assert line == "the student trains in float32 weights (saved as bfloat16; --dtype bfloat16 trains in that)"
    assert model.weight.dtype == torch.float32
    kept = torch.nn.Linear(2, 2).to(torch.bfloat16)
    line = settle_student_dtype(kept, tidal_comp_demo_config(tmp_path, objective="none", dtype="bfloat16"))
    assert kept.weight.dtype == torch.bfloat16 and "are lost" in line
    assert training_dtype(None) == "float32" and training_dtype("auto") == "auto"


@pytest.mark.slow
def test_cli_demo_student_trains_in_float32(tmp_path, capsys):
    from tide_plugin import cli

    args = ["distill", "--objective", "ce", "--max_steps", "1", "--max_samples", "4", "--per_device_train_batch_size",
            "2", "--disable_tqdm", "True", "--output_dir", str(tmp_path / "out")]
    assert cli.main(args) == 0
    assert "tide distill: the student trains in float32 weights (saved as bfloat16" in capsys.readouterr().out
