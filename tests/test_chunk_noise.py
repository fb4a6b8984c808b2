"""Chunk-consistent masking of the ``cross`` pipeline (docs/method.md#mask-propagation):
the unbiased per-chunk draw (default) against the reference's per-token rule, on the
shipped study demo rows aligned with the study tokenizers, through the real collator
chain (``distill_pad`` -> ``noise`` -> ``comp_demo``)."""

from __future__ import annotations

import random

import pytest
import torch

from tide_plugin.alignment import AlignmentError, chunk_alignment
from tide_plugin.alignment.preprocess import load_jsonl, load_tokenizer
from tide_plugin.collators.chain import build_collator_chain
from tide_plugin.collators.noise import Noise, NoiseConfig, stream_seed
from tide_plugin.shipped import demo_assets

from test_collators import EOS, M_S, M_T, PAD, T_PAD, same_row, shared_rows

MAX_LEN, TEACHER_MAX_LEN = 192, 256


@pytest.fixture(scope="module")
def demo():
    """``(rows, student_tok, teacher_tok)``: 128 demo conversations aligned for pipeline A."""
    assets = demo_assets("A")
    st, tt = load_tokenizer(assets["student_tokenizer"]), load_tokenizer(assets["teacher_tokenizer"])
    rows = []
    for conv in load_jsonl(assets["data"])[:128]:
        try:
            ex = chunk_alignment(tt, st, conv["messages"], max_length=MAX_LEN, teacher_max_length=TEACHER_MAX_LEN)
        except AlignmentError:
            continue
        rows.append(ex.to_row())
    assert len(rows) > 100
    return rows, st, tt


def demo_chain(demo, rule, *, seed=0, comp=False):
    _, st, tt = demo
    names = ["distill_pad", "noise"] + (["comp_demo"] if comp else [])
    cfg = {
        "distill_pad": {"eos_id": st.eos_token_id, "pad_id": st.pad_token_id, "teacher_pad_id": tt.pad_token_id or 0,
                        "block_size": 32, "max_length": MAX_LEN, "teacher_max_length": TEACHER_MAX_LEN},
        "noise": {"mask_id": st.mask_token_id, "teacher_mask_id": tt.mask_token_id, "seed": seed, "chunk_noise": rule},
    }
    if comp:
        cfg["comp_demo"] = {"seed": seed}
    return build_collator_chain(names, **cfg)


def masking_ratios(demo, rule, batches):
    """``(masked / sum p, sum w masked / sum w p)`` over maskable student tokens: 1 when
    every maskable token is masked with probability ``p = 1 - alpha(t)`` (linear: ``t``)."""
    rows = demo[0]
    chain = demo_chain(demo, rule, seed=5)
    masked = expected = w_masked = w_expected = 0.0
    for _ in range(batches):
        batch = chain(rows)
        maskable = batch.labels != -100
        n, p, w = maskable.sum(1).double(), batch.t.double(), batch.ce_time_weight.double()
        m = (batch.masked & maskable).sum(1).double()
        masked, expected = masked + m.sum(), expected + (p * n).sum()
        w_masked, w_expected = w_masked + (w * m).sum(), w_expected + (w * p * n).sum()
    return float(masked / expected), float(w_masked / w_expected)


def test_unbiased_rule_masks_at_the_schedule_rate(demo):
    frac, weighted = masking_ratios(demo, "unbiased", 150)
    assert abs(frac - 1.0) < 0.01, frac
    assert abs(weighted - 1.0) < 0.01, weighted  # CE's w(t) stays unbiased


def test_reference_rule_fails_the_same_check(demo):
    frac, weighted = masking_ratios(demo, "reference", 150)
    assert frac > 1.03, frac
    assert weighted > 1.03, weighted  # measured ~1.09-1.11 on these rows


@pytest.mark.parametrize("rule", ["unbiased", "reference"])
def test_masked_chunks_are_whole_on_both_sides(demo, rule):
    rows = demo[0]
    chain = demo_chain(demo, rule, seed=1)
    masked_chunks = 0
    for _ in range(3):
        batch = chain(rows)
        for j in range(batch.batch_size):
            sch, tch = batch.student_chunk_ids[j], batch.teacher_chunk_ids[j]
            maskable, masked, tmask = batch.labels[j] != -100, batch.masked[j], batch.teacher_masked[j]
            assert not tmask[tch < 0].any()  # teacher tokens outside every chunk stay visible
            for c in range(int(batch.num_chunks[j])):
                s_in, t_in = sch == c, tch == c
                hit = bool(tmask[t_in].any())
                assert bool(tmask[t_in].all()) == hit  # a chunk's teacher tokens: all or none
                # its maskable student tokens: all masked exactly when the chunk is; prompt ones never
                assert torch.equal(masked[s_in], maskable[s_in] & hit)
                assert hit <= bool(maskable[s_in].any())  # a prompt-only chunk is never masked
                assert bool(batch.chunk_active[j, c]) == (hit and bool(maskable[s_in].all()))
                masked_chunks += hit
            assert not batch.chunk_active[j, int(batch.num_chunks[j]):].any()
    assert masked_chunks > 1000


def test_unbiased_draw_comes_from_the_stage_generator(demo):
    """Per-token uniforms first, then one uniform per chunk, from the same generator."""
    rows, st, _ = demo
    chain = demo_chain(demo, "unbiased", seed=7)
    for call in range(2):
        batch = chain(rows)
        g = torch.Generator().manual_seed(stream_seed(7, Noise.salt, 0, 0, call))
        b, L = batch.input_ids.shape
        t = 1e-3 + (1.0 - 1e-3) * torch.rand(b, generator=g)
        u = torch.rand((b, L), generator=g)
        u_chunk = torch.rand((b, batch.max_chunks), generator=g)
        torch.testing.assert_close(batch.t, t)
        maskable = batch.labels != -100
        for j in range(b):
            sch = batch.student_chunk_ids[j]
            out = (sch < 0) & maskable[j]
            assert torch.equal(batch.masked[j][out], (u[j] < t[j])[out])  # outside chunks: per token
            for c in range(int(batch.num_chunks[j])):
                s_in = sch == c
                drawn = bool(u_chunk[j, c] < t[j]) and bool(maskable[j][s_in].any())
                assert bool(batch.teacher_masked[j][batch.teacher_chunk_ids[j] == c].any()) == drawn


def test_comp_demo_splits_per_masked_chunk(demo):
    rows = demo[0]
    batch = demo_chain(demo, "unbiased", seed=2, comp=True)(rows)
    a = batch.teacher_view_index.bool()
    assert not (a & ~batch.teacher_masked).any()
    in_a = in_b = 0
    for j in range(batch.batch_size):
        tch = batch.teacher_chunk_ids[j]
        for c in range(int(batch.num_chunks[j])):
            t_in = tch == c
            if batch.teacher_masked[j][t_in].any():
                assert a[j][t_in].all() or not a[j][t_in].any()  # the whole chunk goes to one view
                in_a += bool(a[j][t_in].all())
                in_b += not bool(a[j][t_in].any())
    assert in_a > 100 and in_b > 100


def plain_token_mask(batch, seed, call):
    """The per-token draw alone, from the stage's stream (what same / shared use)."""
    g = torch.Generator().manual_seed(stream_seed(seed, Noise.salt, 0, 0, call))
    b, L = batch.input_ids.shape
    t = 1e-3 + (1.0 - 1e-3) * torch.rand(b, generator=g)
    return (torch.rand((b, L), generator=g) < t[:, None]) & (batch.labels != -100)


@pytest.mark.parametrize("pipeline", ["same", "shared"])
def test_same_and_shared_batches_do_not_depend_on_chunk_noise(pipeline):
    rows = shared_rows(2, b=6) if pipeline == "shared" else [same_row(random.Random(3), 9, 40) for _ in range(6)]
    out = {}
    for rule in ("unbiased", "reference"):
        chain = build_collator_chain(
            ["distill_pad", "noise", "comp_demo"],
            distill_pad={"eos_id": EOS, "pad_id": PAD, "teacher_pad_id": T_PAD},
            noise={"mask_id": M_S, "teacher_mask_id": M_T, "seed": 4, "chunk_noise": rule},
            comp_demo={"seed": 4},
        )
        out[rule] = [chain(rows) for _ in range(3)]
    for call, (u, r) in enumerate(zip(out["unbiased"], out["reference"])):
        assert u.pipeline == pipeline
        for f in ("t", "masked", "noisy_input_ids", "ce_time_weight", "teacher_masked", "teacher_noisy_ids",
                  "teacher_view_index"):
            assert torch.equal(getattr(u, f), getattr(r, f)), f
        assert torch.equal(u.masked, plain_token_mask(u, 4, call))


def test_chunk_noise_is_validated_and_reaches_the_stage():
    with pytest.raises(ValueError, match=r"chunk_noise 'per_chunk' is not one of \('unbiased', 'reference'\)"):
        NoiseConfig(mask_id=M_S, chunk_noise="per_chunk")
    assert NoiseConfig(mask_id=M_S).chunk_noise == "unbiased"
    from tide_plugin.training.builders import build_collator
    from tide_plugin.training.config import DistillConfig

    with pytest.raises(ValueError, match="chunk_noise 'referense' is not one of"):
        DistillConfig(output_dir="unused", objective="reverse_calm", chunk_noise="referense")
    for rule in ("unbiased", "reference"):
        cfg = DistillConfig(output_dir="unused", objective="reverse_calm", chunk_noise=rule, report_to=[])
        collator = build_collator(cfg, student_eos_id=EOS, student_mask_id=M_S, teacher_mask_id=M_T)
        noise = next(s for s in collator.chain.stages if isinstance(s, Noise))
        assert noise.config.chunk_noise == rule
