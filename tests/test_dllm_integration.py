"""dllm's schedulers drive the noise stage (exactly, or refused in one line), and
``build_trainer(eval_dataset=..., heldout=...)`` evaluates: eval_loss, held-out bits per
byte, and dllm's nll/ppl on the dllm backend. The scheduler tests run on a scheduler
written in dllm's interface (``alpha(t)``, ``alpha_derivative(t)``); where dllm imports,
its own schedulers and trainer are used too."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import torch
from helpers.distill import EOS, MASK, V, synthetic_rows

import tide_plugin
from tide_plugin.integrations.dllm_schedulers import DllmAlphaSchedule, dllm_scheduler_names, registry_name
from tide_plugin.tiny import tiny_qwen3
from tide_plugin.training import DistillConfig, build_trainer, dllm_available

needs_dllm = pytest.mark.skipif(not dllm_available(), reason="dllm is not installed (it installs from its source)")


@dataclass
class QuadraticAlphaScheduler:
    """alpha(t) = 1 - t^2 in dllm's scheduler interface; counts its calls."""

    calls: list = field(default_factory=list)

    def alpha(self, t):
        self.calls.append("alpha")
        return 1 - t**2

    def alpha_derivative(self, t):
        self.calls.append("alpha_derivative")
        return -2 * t


def _config(tmp_path, **kw) -> DistillConfig:
    base = dict(output_dir=str(tmp_path / "run"), objective="tidal", pipeline="same", shared_vocab_size=V, block_size=4,
                max_steps=2, logging_steps=1, per_device_train_batch_size=4, save_strategy="no", disable_tqdm=True,
                use_cpu=True, dataloader_pin_memory=False, report_to="none")
    base.update(kw)
    return DistillConfig(**base)


def _build(cfg, backend="transformers", **kw):
    return build_trainer(cfg, student=tiny_qwen3(V, seed=0), teacher_model=tiny_qwen3(V, seed=1),
                         train_dataset=synthetic_rows(16), student_mask_id=MASK, student_eos_id=EOS, backend=backend, **kw)


def _noise_stage(trainer):
    return next(s for s in trainer.data_collator.chain.stages if hasattr(s, "scheduler"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_adapter_is_the_schedulers_alpha_and_derivative(dtype):
    sched = QuadraticAlphaScheduler()
    schedule = DllmAlphaSchedule(sched)
    t = torch.tensor([1e-3, 0.1, 0.5, 0.9, 0.999], dtype=dtype)
    assert torch.equal(schedule.alpha(t), 1 - t**2) and torch.equal(schedule.alpha_prime(t), -2 * t)
    assert torch.equal(schedule.mask_prob(t), 1.0 - (1 - t**2))  # dllm: p_mask = 1 - alpha(t)
    assert torch.equal(schedule.elbo_weight(t), -(-2 * t) / (1 - (1 - t**2) + 1e-6))  # dllm's weight(t)
    assert schedule.name == "dllm_quadratic" == registry_name("QuadraticAlphaScheduler")
    with pytest.raises(TypeError, match="is not a dllm alpha scheduler .it has no alpha_derivative"):
        DllmAlphaSchedule(type("Half", (), {"alpha": lambda self, t: t})())


def test_scheduler_drives_the_noise_stage_and_is_called(tmp_path):
    sched = QuadraticAlphaScheduler()
    cfg = _config(tmp_path)
    trainer = _build(cfg, scheduler=sched)
    stage = _noise_stage(trainer)
    assert isinstance(stage.scheduler, DllmAlphaSchedule) and stage.scheduler.scheduler is sched
    assert cfg.masking_schedule == "dllm_quadratic"
    batch = trainer.data_collator(synthetic_rows(4))["distill_batch"]
    t = batch.t
    assert torch.equal(batch.ce_time_weight, -(-2 * t) / (1 - (1 - t**2) + 1e-6))
    sched.calls.clear()
    trainer.train()
    assert sched.calls.count("alpha") >= 2 and sched.calls.count("alpha_derivative") >= 2  # every step


def test_a_scheduler_that_cannot_drive_the_masking_is_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot drive the masking: the collator chain has no stage that masks"):
        _build(_config(tmp_path, collators="distill_pad"), scheduler=QuadraticAlphaScheduler())
    with pytest.raises(ValueError, match="and masking_schedule 'cosine' disagree; give one of them"):
        _build(_config(tmp_path, masking_schedule="cosine"), scheduler=QuadraticAlphaScheduler())


def test_dllms_schedulers_are_listed_exactly_when_dllm_is_installed():
    names = {i.name for i in tide_plugin.get_registry()._plugins["masking_schedule"].values()}
    listed = {registry_name(n) for n in dllm_scheduler_names()}
    assert listed <= names
    assert bool(listed) == dllm_available()


def _heldout_rows(n=3):
    from tide_plugin.shipped import DEMO_DATA_DIR

    lines = (DEMO_DATA_DIR / "heldout.jsonl").read_text().splitlines()[:n]
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("backend", ["transformers", pytest.param("dllm", marks=needs_dllm)])
def test_evaluate_scores_the_eval_rows_and_heldout_bits_per_byte(backend, tmp_path):
    from tide_plugin.shipped import demo_assets
    from tide_plugin.alignment.preprocess import load_tokenizer
    from tide_plugin.training.heldout import heldout_bpb_scorer

    try:
        assets = demo_assets("B")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    tok = load_tokenizer(assets["student_tokenizer"])
    student = tiny_qwen3(len(tok), seed=0, hidden_size=32)
    cfg = _config(tmp_path, shared_vocab_size=None, block_size=32, per_device_eval_batch_size=4)
    rows = [{"input_ids": r["input_ids"] + [tok.eos_token_id], "labels": r["labels"] + [tok.eos_token_id]}
            for r in synthetic_rows(8)]
    trainer = build_trainer(cfg, student=student, teacher_model=tiny_qwen3(len(tok), seed=1, hidden_size=32),
                            train_dataset=rows, eval_dataset=rows[:4], heldout=_heldout_rows(), student_tokenizer=tok,
                            backend=backend)
    metrics = trainer.evaluate()
    expected = heldout_bpb_scorer(_heldout_rows(), tok, block_size=32)(student)
    assert metrics["eval_heldout_bpb"] == pytest.approx(expected.bpb, rel=1e-6) and metrics["eval_loss"] > 0
    assert metrics["eval_heldout_bpb_se"] == pytest.approx(expected.se, rel=1e-6)
    if backend == "dllm":
        logged = {k for h in trainer.state.log_history for k in h}
        assert {"eval_nll", "eval_ppl"} <= logged


@needs_dllm
@pytest.mark.parametrize("given", ["object", "name"])
def test_dllms_own_scheduler_drives_dllms_trainer_exactly(given, tmp_path):
    from dllm.core.schedulers import CosineAlphaScheduler

    from tide_plugin.integrations.dllm import DllmDistillBD3LMTrainer

    cfg = _config(tmp_path)
    sched = CosineAlphaScheduler() if given == "object" else "CosineAlphaScheduler"
    trainer = _build(cfg, backend="dllm", scheduler=sched)
    assert isinstance(trainer, DllmDistillBD3LMTrainer) and isinstance(trainer.scheduler, CosineAlphaScheduler)
    assert cfg.masking_schedule == "dllm_cosine"
    batch = trainer.data_collator(synthetic_rows(4))["distill_batch"]
    dllm_weight = trainer.scheduler.weight(batch.t)
    assert torch.equal(batch.ce_time_weight, dllm_weight)
    t = torch.linspace(1e-3, 0.999, 101)
    assert torch.equal(_noise_stage(trainer).scheduler.mask_prob(t), 1.0 - trainer.scheduler(t))
    # without scheduler=, dllm's attribute is the scheduler with the configured alpha(t)
    plain = _build(_config(tmp_path / "b", masking_schedule="cosine"), backend="dllm")
    assert isinstance(plain.scheduler, CosineAlphaScheduler)
