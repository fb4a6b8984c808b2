"""Resume: 6 steps straight == 3 steps, save, resume for 3 (same TIDAL lambdas from
the trainer state, same losses within tolerance)."""

from __future__ import annotations

import pytest
import transformers
from helpers.distill import EOS, MASK, V, synthetic_rows, tidal_comp_demo_config

from tide_plugin.training import build_trainer
from tide_plugin.tiny import tiny_qwen3, tiny_qwen3_moe


class StopAt(transformers.TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = True
            control.should_training_stop = True
        return control


def _run(out, *, stop_at=None, resume=None):
    cfg = tidal_comp_demo_config(out, max_steps=6, per_device_train_batch_size=4)
    trainer = build_trainer(
        cfg,
        student=tiny_qwen3(V, seed=0),
        teacher_model=tiny_qwen3_moe(V, seed=1),
        train_dataset=synthetic_rows(96, seed=5),
        student_mask_id=MASK,
        student_eos_id=EOS,
        callbacks=[StopAt(stop_at)] if stop_at else None,
    )
    trainer.train(resume_from_checkpoint=resume)
    return {h["step"]: h for h in trainer.state.log_history if "loss" in h}


@pytest.mark.slow
def test_resume_continues_the_same_schedule_and_losses(tmp_path):
    straight = _run(tmp_path / "straight")
    first = _run(tmp_path / "split", stop_at=3)
    assert sorted(first) == [1, 2, 3]
    resumed = _run(tmp_path / "split", resume=str(tmp_path / "split" / "checkpoint-3"))
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]  # the restored state keeps the first half's logs
    for step in range(1, 7):
        got = (first if step <= 3 else resumed)[step]
        ref = straight[step]
        assert got["progress"] == pytest.approx(ref["progress"], abs=1e-9) == pytest.approx((step - 1) / 6)
        assert got["lambda/tidal"] == pytest.approx(ref["lambda/tidal"], abs=1e-6)
        for key in ("loss", "ce", "tidal"):
            assert got[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-6), (step, key)
    # the schedule really moves: lambda grows with progress
    assert straight[6]["lambda/tidal"] != straight[1]["lambda/tidal"]


@pytest.mark.slow
def test_cli_saves_resumes_and_reports_the_whole_run(tmp_path, capsys, monkeypatch):
    """`--save_steps 1` alone saves (the shared preset says save_strategy "no");
    `--resume_from_checkpoint True` continues from the last checkpoint; a third run into
    the finished folder is refused; train_loss covers every step; names are registered ones."""
    import json

    from tide_plugin import cli

    monkeypatch.delenv("TIDE_DEBUG", raising=False)
    out = tmp_path / "run"
    common = ["distill", "--preset", "shared", "--max_samples", "8", "--logging_steps", "1", "--output_dir", str(out),
              "--per_device_train_batch_size", "2", "--disable_tqdm", "True"]
    assert cli.main([*common, "--max_steps", "2", "--save_steps", "1"]) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    first = capsys.readouterr().out
    assert "objective 'tidal'" in first and "taid_aligned" not in first
    assert cli.main([*common, "--max_steps", "4", "--save_steps", "100", "--resume_from_checkpoint", "True"]) == 0
    assert "(resuming " in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"].endswith("checkpoint-2") and metrics["objective"] == "tidal"
    losses = [h["loss"] for h in metrics["history"]]
    assert [h["step"] for h in metrics["history"]] == [1, 2, 3, 4]
    assert metrics["train"]["train_loss"] == pytest.approx(sum(losses) / 4, abs=1e-3)
    assert metrics["train"]["train_loss_scope"] == "whole run (steps 1-4)"
    assert cli.main([*common, "--max_steps", "2"]) == 2
    assert "already holds a finished run" in capsys.readouterr().err
