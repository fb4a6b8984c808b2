"""The CE-only control (``--objective none``, alias ``ce``): the same trainer and
collator chain as a distilled run, no teacher built or run, only ``ce`` logged; its CE
trajectory is the distilled run's with the objective's weight 0."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.distill import EOS, MASK, V, synthetic_rows, tidal_comp_demo_config

import tide_plugin
from tide_plugin.training import build_trainer
from tide_plugin.tiny import tiny_qwen3, tiny_qwen3_moe


def _train(tmp_path, name, objective, teacher, **overrides):
    cfg = tidal_comp_demo_config(tmp_path / name, objective=objective, max_steps=3, per_device_train_batch_size=4,
                                 **overrides)
    student = tiny_qwen3(V, seed=0)
    trainer = build_trainer(cfg, student=student, teacher_model=teacher, train_dataset=synthetic_rows(48, seed=3),
                            student_mask_id=MASK, student_eos_id=EOS)
    trainer.train()
    return trainer, [h for h in trainer.state.log_history if "loss" in h and "ce" in h]


def test_ce_only_is_the_distilled_run_with_weight_zero(tmp_path):
    control, ce_log = _train(tmp_path, "ce", "ce", teacher=None)  # no teacher needed
    assert control.teacher is None and control.objective.name == "none"
    zero, zero_log = _train(tmp_path, "zero", "tidal", teacher=tiny_qwen3_moe(V, seed=1),
                            objective_config={"tidal": {"weight": 0.0}})
    assert [h["step"] for h in ce_log] == [h["step"] for h in zero_log] == [1, 2, 3]
    for a, b in zip(ce_log, zero_log):
        assert a["ce"] == pytest.approx(b["ce"], rel=1e-5, abs=1e-7)  # same masks, data order, updates
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
        assert "tidal" in b and not any(k == "tidal" or k.startswith("lambda/") for k in a)  # logged: ce only
        assert a["stats/masked_tokens"] == b["stats/masked_tokens"]
    for (name, p), q in zip(control.model.named_parameters(), zero.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_ce_only_is_registered_and_reads_no_teacher():
    obj = tide_plugin.get_objective("none")
    assert obj.reads_teacher is False and obj.units == {} and obj.requirements == frozenset()
    assert tide_plugin.get_objective("ce").name == "none"
    assert tide_plugin.get_objective("none+kl").reads_teacher  # composed: reads the teacher if any part does


@pytest.mark.slow
def test_cli_ce_only_on_the_shipped_demo(tmp_path, capsys):
    from tide_plugin import cli

    out = tmp_path / "ce"
    args = ["distill", "--objective", "ce", "--max_steps", "2", "--max_samples", "8", "--logging_steps", "1",
            "--per_device_train_batch_size", "2", "--disable_tqdm", "True", "--output_dir", str(out)]
    assert cli.main(args) == 0
    said = capsys.readouterr().out
    assert "objective 'none'" in said and "teacher 'none (CE only)'" in said and "pipeline 'cross'" in said
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["objective"] == "none" and [h["step"] for h in metrics["history"]] == [1, 2]
    assert not any(k in h for h in metrics["history"] for k in ("reverse_calm", "calm"))
