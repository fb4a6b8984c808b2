"""Resume: 6 steps straight == 3 steps, save, resume for 3 (same TIDAL lambdas from
the trainer state, same losses within tolerance)."""

from __future__ import annotations

import pytest
import transformers
from _distill_helpers import EOS, MASK, V, synthetic_rows, tidal_comp_demo_config

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
