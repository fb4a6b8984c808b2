"""Evaluation noises its batches from its own copy of the collators' random streams
(``training.loss.eval_collator``): evaluating mid-run leaves training exactly as it is
without evaluation, and every evaluation of a run scores the same noise."""

from __future__ import annotations

import pytest
import torch
from helpers.distill import EOS, MASK, V, synthetic_rows

from tide_plugin.tiny import tiny_qwen3
from tide_plugin.training import DistillConfig, build_trainer

pytestmark = pytest.mark.slow


def _run(tmp_path, name, **kw):
    cfg = DistillConfig(
        output_dir=str(tmp_path / name), objective="tidal", pipeline="same", shared_vocab_size=V, block_size=4,
        max_steps=4, logging_steps=1, per_device_train_batch_size=4, per_device_eval_batch_size=4,
        save_strategy="no", disable_tqdm=True, use_cpu=True, dataloader_pin_memory=False, report_to="none",
        learning_rate=1e-2, **kw,
    )
    rows = synthetic_rows(16)
    trainer = build_trainer(cfg, student=tiny_qwen3(V, seed=0), teacher_model=tiny_qwen3(V, seed=1),
                            train_dataset=rows, eval_dataset=rows[:8], student_mask_id=MASK, student_eos_id=EOS)
    trainer.train()
    return trainer


def _train_losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_evaluating_mid_run_leaves_training_unchanged(tmp_path):
    plain = _run(tmp_path, "plain")
    evaluated = _run(tmp_path, "evaluated", eval_strategy="steps", eval_steps=1)
    assert sum("eval_loss" in h for h in evaluated.state.log_history) == 4
    assert _train_losses(evaluated) == _train_losses(plain)
    for (name, a), (_, b) in zip(plain.model.named_parameters(), evaluated.model.named_parameters()):
        assert torch.equal(a, b), name


def test_every_evaluation_scores_the_same_noise(tmp_path):
    trainer = _run(tmp_path, "twice")
    first, second = trainer.evaluate()["eval_loss"], trainer.evaluate()["eval_loss"]
    assert first == second
