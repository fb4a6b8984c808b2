"""The fused output layer in the training step: the default, the same loss, parts and
gradients as full logits, and full logits whenever something cannot be fused."""

from __future__ import annotations

import logging

import torch
from helpers.distill import EOS, MASK, V, synthetic_rows

from tide_plugin.objectives.base import Objective
from tide_plugin.tiny import tiny_qwen3, tiny_qwen3_moe
from tide_plugin.training import DistillConfig, build_trainer
from tide_plugin.training.loss import _distill_batch


def _trainer(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "run"), objective="kl+tidal", pipeline="same", shared_vocab_size=V, block_size=4,
        max_steps=2, per_device_train_batch_size=4, save_strategy="no", disable_tqdm=True, use_cpu=True,
        dataloader_pin_memory=False, use_comp_demo=True,
    )
    base.update(kw)
    return build_trainer(
        DistillConfig(**base), student=tiny_qwen3(V, seed=0), teacher_model=tiny_qwen3_moe(V, seed=1),
        train_dataset=synthetic_rows(8), student_mask_id=MASK, student_eos_id=EOS,
    )


def _full_and_fused(tr):
    """One training batch through ``distill_forward`` with full logits, then fused:
    ``((loss, logged, flat gradient) full, (...) fused, batch)``."""
    tr.model.train()
    batch = _distill_batch(next(iter(tr.get_train_dataloader())))
    tr.get_batch_samples(iter([{"distill_batch": batch}]), 1, torch.device("cpu"))  # the window denominator
    params = [p for p in tr.model.parameters() if p.requires_grad]

    def step(fused: bool):
        tr._tide_fused = fused
        loss, logged = tr.distill_forward(tr.model, batch)
        grads = torch.autograd.grad(loss, params)
        return loss.detach(), logged, torch.cat([g.flatten() for g in grads])

    return step(False), step(True), batch


def test_fused_is_the_default_and_matches_full_logits(tmp_path):
    tr = _trainer(tmp_path)
    assert tr.args.fused_output_layer and tr._tide_fused
    (l_full, logged_full, g_full), (l_fused, logged_fused, g_fused), _ = _full_and_fused(tr)
    torch.testing.assert_close(l_fused, l_full, rtol=1e-5, atol=1e-6)
    assert logged_fused.keys() == logged_full.keys() >= {"ce", "kl", "tidal"}
    for k in logged_full:
        torch.testing.assert_close(logged_fused[k], logged_full[k], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_fused, g_full, rtol=1e-4, atol=1e-6)


class _FullLogitsConfig:
    requirements = frozenset({"token_alignment"})
    unit = "masked_rows"


class _ReadsFullLogits(Objective):
    """A third-party objective that reads ``student_logits`` as a tensor."""

    name = "third_party"

    def __init__(self) -> None:
        self.config = _FullLogitsConfig()

    def forward(self, inputs):
        return {"third_party": inputs.student_logits.float().logsumexp(-1).mean() * 0.0}


def test_objectives_without_row_support_get_full_logits(tmp_path, caplog):
    tr = _trainer(tmp_path)
    with caplog.at_level(logging.WARNING, logger="tide_plugin.training.loss"):
        tr.setup_distillation(teacher=tr.teacher, objective=_ReadsFullLogits(), pipeline_info=tr.pipeline_info)
    assert not tr._tide_fused
    assert "fused output layer off" in caplog.text and "['third_party']" in caplog.text
    batch = _distill_batch(next(iter(tr.get_train_dataloader())))
    loss, logged = tr.distill_forward(tr.model, batch)  # runs on full logits
    assert torch.isfinite(loss) and "third_party" in logged


def test_flag_turns_it_off(tmp_path):
    tr = _trainer(tmp_path, fused_output_layer=False)
    assert not tr._tide_fused


def test_the_example_jsd_plugin_runs_fused_and_matches_plain_jsd(tmp_path):
    """The example plugin's divergence is a pure function on the row engine: a run with it
    is fused, and its loss, parts and gradients equal the full-logits step, whose part is
    a plain Jensen-Shannon divergence over the masked positions."""
    import math

    tr = _trainer(tmp_path, objective="jensen_shannon", use_comp_demo=False)
    assert tr._tide_fused
    (l_full, logged_full, g_full), (l_fused, logged_fused, g_fused), batch = _full_and_fused(tr)
    torch.testing.assert_close(l_fused, l_full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logged_fused["jensen_shannon"], logged_full["jensen_shannon"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_fused, g_full, rtol=1e-4, atol=1e-6)

    # the part against a plain JSD of the full logits, one masked position at a time
    from tide_plugin.bd3lm import block_diffusion_logits

    with torch.no_grad():
        z_s = block_diffusion_logits(tr.model, batch.noisy_input_ids, batch.input_ids, block_size=4,
                                     attention_mask=batch.attention_mask).float()
        z_t = tr.teacher(batch).float()
    tau = tr.objective.config.temperature
    terms = []
    for i, j in batch.masked.nonzero().tolist():
        p, q = (z_t[i, j, :V] / tau).softmax(-1), (z_s[i, j, :V] / tau).softmax(-1)
        m = (p + q) / 2
        terms.append(0.5 * (p * (p / m).log()).sum() + 0.5 * (q * (q / m).log()).sum())
    want = torch.stack(terms).mean() * tau**2
    assert math.isclose(float(logged_fused["jensen_shannon"]), float(want), rel_tol=1e-4)


def test_gold_log_probs_are_computed_once_per_step_and_shared(tmp_path, monkeypatch):
    """The explicit step: the student's gold log-probs at CE's rows are projected once,
    before the objective; CE and the chunk objectives (calm + tidal_calm) read them, so
    no student row is projected a second time, and the step equals the full-logits one."""
    from helpers.distill import ROWS, normalisation_config

    from tide_plugin import logits as logits_rows

    cfg = normalisation_config(tmp_path, "cross")
    tr = build_trainer(cfg, student=tiny_qwen3(V, seed=0), teacher_model=tiny_qwen3_moe(V, seed=1),
                       train_dataset=ROWS["cross"](8, seed=4), student_mask_id=MASK, student_eos_id=EOS)
    assert tr._tide_fused
    tr.model.train()
    batch = tr.data_collator(ROWS["cross"](4, seed=5))["distill_batch"]
    tr.get_batch_samples(iter([{"distill_batch": batch}]), 1, torch.device("cpu"))
    student_weight = tr.model.get_output_embeddings().weight
    projected = []
    real = logits_rows._GoldLogProb.forward

    def counting(ctx, rows, gold, *leaves):
        if rows.projected and rows.weight is student_weight:
            projected.append(rows.n)
        return real(ctx, rows, gold, *leaves)

    monkeypatch.setattr(logits_rows._GoldLogProb, "forward", staticmethod(counting))
    params = [p for p in tr.model.parameters() if p.requires_grad]
    loss, logged = tr.distill_forward(tr.model, batch)
    ce_rows = int((batch.masked & (batch.labels != -100)).sum())
    assert projected == [ce_rows] and ce_rows > 0  # once, CE's rows; the chunk objectives add none
    assert float(logged["calm"]) > 0
    g_fused = torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])
    tr._tide_fused = False
    l_full, logged_full = tr.distill_forward(tr.model, batch)
    g_full = torch.cat([g.flatten() for g in torch.autograd.grad(l_full, params)])
    torch.testing.assert_close(loss, l_full, rtol=1e-5, atol=1e-6)
    for k in logged_full:
        torch.testing.assert_close(logged[k], logged_full[k], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_fused, g_full, rtol=1e-4, atol=1e-6)
