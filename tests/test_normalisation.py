"""One normalisation rule (docs/method.md#normalisation, ours): CE and every objective part are sums over the
gradient-accumulation window divided by the window's count of their units, so that
N micro-batches of b give the gradient of one batch of N*b; the collators' counters are
logged; dllm's NLL/PPL meter is fed as dllm feeds it. (2 processes x b against 1 x 2b:
tests/test_multiprocess.py.)"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers.distill import (
    EOS, MASK, ROWS, V, normalisation_config, split_batch, synthetic_rows, window_gradient,
)

from tide_plugin.bd3lm import bd3lm_nll, block_diffusion_logits
from tide_plugin.training import DistillBD3LMTrainer, build_trainer
from tide_plugin.training.loss import dllm_nll_update
from tide_plugin.training.normalise import (
    local_denominators, normalise, part_units, unit_count, window_denominators, window_units,
)
from tide_plugin.tiny import tiny_qwen3, tiny_qwen3_moe


def _trainer(cfg, rows):
    return build_trainer(
        cfg, student=tiny_qwen3(V, seed=0), teacher_model=tiny_qwen3_moe(V, seed=1), train_dataset=rows,
        student_mask_id=MASK, student_eos_id=EOS,
    )


@pytest.mark.parametrize("pipeline", ["same", "shared", "cross"])
@pytest.mark.parametrize("norm", ["token", "sequence"])
def test_accumulation_of_micro_batches_equals_one_big_batch(tmp_path, pipeline, norm):
    """2 micro-batches of 2 rows give the gradient of one batch of 4, for the total loss
    (CE and every objective part, CompDemo on), also when the micro-batches hold different
    numbers of every unit (otherwise a per-micro-batch mean would pass too)."""
    tr = _trainer(normalisation_config(tmp_path, pipeline, loss_norm_type=norm), ROWS[pipeline](8, seed=4))
    tr.model.train()
    full = tr.data_collator(ROWS[pipeline](4, seed=5))["distill_batch"]
    halves = [split_batch(full, [0]), split_batch(full, [1, 2, 3])]
    for unit in window_units(tr._tide_units):  # a per-micro-batch mean would differ
        assert int(unit_count(halves[0], unit)) != int(unit_count(halves[1], unit)), unit
    assert len(tr._tide_units) == 2  # both parts of the composed objective take part

    whole = window_gradient(tr, tr.model, [full])
    accumulated = window_gradient(tr, tr.model, halves)
    assert whole.abs().max() > 0
    torch.testing.assert_close(accumulated, whole, rtol=1e-4, atol=1e-6)


def test_a_window_without_units_adds_zero_not_nan(tmp_path):
    """A micro-batch with no masked row (and no target) beside one with many: finite
    gradient, equal to the big batch's."""
    tr = _trainer(normalisation_config(tmp_path, "same"), synthetic_rows(8))
    tr.model.train()
    full = tr.data_collator(synthetic_rows(3, seed=6))["distill_batch"]
    full.masked[0] = False
    full.labels[0] = -100
    halves = [split_batch(full, [0]), split_batch(full, [1, 2])]
    assert int(unit_count(halves[0], "masked_rows")) == 0 and int(unit_count(halves[0], "maskable_tokens")) == 0
    torch.testing.assert_close(window_gradient(tr, tr.model, halves), window_gradient(tr, tr.model, [full]))
    only_empty = window_gradient(tr, tr.model, [halves[0]])
    assert torch.isfinite(only_empty).all() and only_empty.abs().max() == 0
    loss, _ = tr.distill_forward(tr.model, halves[0])  # the window counted above: no unit at all
    assert float(loss.detach()) == 0.0


def test_window_arithmetic_by_hand():
    counts = torch.tensor([0, 6, 9])
    den = window_denominators(counts, micro_batches=2, world_size=3)
    torch.testing.assert_close(den, torch.tensor([1 / 6, 1.0, 1.5]))  # max(1, 0) for the empty unit
    total = torch.tensor(10.0, requires_grad=True)  # a part: the sum over its local units
    value = normalise({"kl": total}, {"kl": "masked_rows"}, {"masked_rows": den[2]})["kl"]
    torch.testing.assert_close(value, torch.tensor(10.0 / 1.5))
    value.backward()
    torch.testing.assert_close(total.grad, torch.tensor(1 / 1.5))
    zero = normalise({"calm": torch.tensor(0.0)}, {"calm": "active_chunks"}, {"active_chunks": den[0]})["calm"]
    torch.testing.assert_close(zero, torch.tensor(0.0))
    with pytest.raises(ValueError, match="returned the part 'tidal', which it does not declare"):
        normalise({"tidal": total}, {"kl": "masked_rows"}, {"masked_rows": den[2]})


def test_parts_are_sums_divided_once_by_the_trainer(tmp_path):
    """Objectives return sums over their unit; outside training the trainer divides each
    by the micro-batch's own count, so the values are the documented means, and the
    logged values come from the same sums."""
    from tide_plugin.batch import DistillInputs

    tr = _trainer(normalisation_config(tmp_path, "same"), synthetic_rows(8))
    batch = tr.data_collator(synthetic_rows(3, seed=8))["distill_batch"]
    units = tr._tide_units
    tr.model.eval()
    with torch.no_grad():
        loss, logged = tr.distill_forward(tr.model, batch)
        logits = block_diffusion_logits(tr.model, batch.noisy_input_ids, batch.input_ids, block_size=4,
                                        attention_mask=batch.attention_mask)
        sums = tr.objective(DistillInputs(batch=batch, student_logits=logits, teacher_logits=tr.teacher(batch),
                                          progress=tr.state.global_step / max(tr.state.max_steps, 1),
                                          shared_vocab_size=tr.args.shared_vocab_size))
    local = local_denominators(batch, sorted(set(units.values())))
    assert set(sums) == set(units) and int(unit_count(batch, "masked_rows")) > 1
    total = logged["ce"] * tr.args.ce_weight
    for part, value in sums.items():
        torch.testing.assert_close(logged[part], value / local[units[part]], rtol=1e-5, atol=1e-6)
        total = total + logged[part]
    torch.testing.assert_close(loss, total, rtol=1e-5, atol=1e-6)  # eval: trained = logged


def test_every_part_declares_its_unit():
    from tide_plugin import get_objective

    expected = {"kl": "masked_rows", "kl_aligned": "pairs", "reverse_kl": "masked_rows", "tidal": "masked_rows",
                "taid_aligned": "pairs", "calm": "active_chunks", "reverse_calm": "active_chunks",
                "tidal_calm": "active_chunks"}
    for name, unit in expected.items():
        assert set(part_units(get_objective(name)).values()) == {unit}, name
    assert part_units(get_objective("kl+tidal")) == {"kl": "masked_rows", "tidal": "masked_rows"}

    class NoUnit:
        name = "mine"

    with pytest.raises(ValueError, match=r"'mine' declares unit None; .*one of \('masked_rows'"):
        part_units(NoUnit())


@pytest.mark.parametrize("pipeline", ["shared", "cross"])
def test_collator_counters_are_logged_at_logging_steps(tmp_path, pipeline):
    """batch.stats summed over the batches of each logging interval land in the log
    history and metrics.json (as ``stats/<name>``), and are not plotted as loss parts."""
    from tide_plugin.training.report import write_metrics

    cfg = normalisation_config(tmp_path / "run", pipeline, logging_steps=2, max_length=16,
                               gradient_accumulation_steps=2, per_device_train_batch_size=2)
    tr = _trainer(cfg, ROWS[pipeline](16, seed=7))
    seen = []
    chain = tr.data_collator.chain
    tr.data_collator.chain = lambda rows: seen.append(chain(rows)) or seen[-1]
    tr.train()
    logs = [h for h in tr.state.log_history if "loss" in h]
    assert [h["step"] for h in logs] == [2, 4]
    expected = {k: sum(b.stats[k] for b in seen[4 * i: 4 * i + 4]) for i in range(2) for k in seen[0].stats}
    for i, h in enumerate(logs):
        for key in ("masked_tokens", "demo_a_tokens", "demo_b_tokens", "truncated_examples",
                    "dropped_pairs" if pipeline == "shared" else "dropped_chunks"):
            want = sum(b.stats[key] for b in seen[4 * i: 4 * i + 4])
            assert h[f"stats/{key}"] == pytest.approx(want), key
    assert expected and sum(h["stats/truncated_examples"] for h in logs) > 0  # max_length 16 truncates
    metrics = write_metrics(tr, tmp_path, {"objective": cfg.objective})
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["history"][0]["stats/masked_tokens"] == logs[0]["stats/masked_tokens"]
    assert not any(p.startswith("stats/") for p in metrics["parts"])


class _MeteredTrainer(DistillBD3LMTrainer):
    """Keeps the weighted mean dllm's meter keeps, fed by the same hook the dllm-based
    trainer uses (dllm itself cannot be installed here)."""

    def record_nll(self, training, row_nll, maskable):
        value, weight = dllm_nll_update(row_nll, maskable)
        split = "train" if training else "eval"
        total, count = self.meter_state.get(split, (0.0, 0.0))
        self.meter_state[split] = (total + float(value * weight), count + float(weight))


def test_dllm_nll_and_ppl_match_dllms_formula(tmp_path):
    """dllm: token_nll = CE(logits, x0) * w(t) * masked ([b, L], full cross entropy),
    meter.update(value=token_nll, weight=maskable); NLL = weighted mean, PPL = exp(NLL)."""
    cfg = normalisation_config(tmp_path, "same")
    tr = build_trainer(cfg, student=tiny_qwen3(V, seed=0), teacher_model=tiny_qwen3_moe(V, seed=1),
                       train_dataset=synthetic_rows(8), student_mask_id=MASK, student_eos_id=EOS)
    tr.__class__ = _MeteredTrainer
    tr.meter_state = {}
    tr.model.train()
    batches = [tr.data_collator(synthetic_rows(3, seed=s))["distill_batch"] for s in (11, 12)]
    batches[1].labels[0] = -100  # a row without targets
    batches[1].masked[0] = False
    num = den = 0.0
    for b in batches:
        tr.distill_forward(tr.model, b)
        with torch.no_grad():
            logits = block_diffusion_logits(tr.model, b.noisy_input_ids, b.input_ids, block_size=4,
                                            attention_mask=b.attention_mask)
            token_nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), b.input_ids, reduction="none")
            w = 1.0 / (1.0 - (1.0 - b.t) + 1e-6)  # docs/method.md#noising, linear alpha(t) = 1 - t: -alpha' / (1 - alpha + 1e-6)
            token_nll = token_nll * w[:, None] * b.masked
            maskable = (b.labels != -100).float()
            num += float((token_nll * maskable).sum())
            den += float(maskable.sum())
    total, count = tr.meter_state["train"]
    assert count == den and total == pytest.approx(num, rel=1e-5)
    nll = total / count
    assert math.exp(nll) == pytest.approx(math.exp(num / den), rel=1e-5)
    tr.model.eval()
    with torch.no_grad():
        tr.distill_forward(tr.model, batches[0])
    assert "eval" in tr.meter_state
    empty = dllm_nll_update(torch.zeros(2), torch.zeros(2, 5, dtype=torch.bool))
    assert float(empty[0]) == 0.0 and float(empty[1]) == 0.0  # no target: adds nothing, no NaN


def test_bd3lm_nll_rows_by_hand():
    g = torch.Generator().manual_seed(0)
    logits, x0 = torch.randn(2, 5, 7, generator=g), torch.randint(0, 7, (2, 5), generator=g)
    masked = torch.rand(2, 5, generator=g) < 0.6
    maskable = torch.ones(2, 5, dtype=torch.bool)
    w = torch.tensor([2.0, 0.5])
    rows = bd3lm_nll(logits, x0, masked=masked, maskable=maskable, weight=w)
    lp = logits.log_softmax(-1).gather(-1, x0[..., None])[..., 0]
    torch.testing.assert_close(rows, -(lp * masked).sum(-1) * w)
