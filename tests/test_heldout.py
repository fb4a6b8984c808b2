"""Held-out bits per byte (tide_plugin.eval.heldout, docs/method.md#sampling-and-evaluation):
every model read through a reader (the student's BD3LM forward, a teacher's registered
adapter), any registered masking schedule, and the shipped demo models' figures pinned to
the values the estimator gave before it moved out of the study."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tide_plugin.alignment.preprocess import load_jsonl, load_tokenizer
from tide_plugin.eval.heldout import (
    BpbResult,
    Encoded,
    Reader,
    encode_heldout,
    heldout_bpb,
    heldout_scorer,
    score_student,
    score_teacher,
    sequence_noise,
    student_reader,
    teacher_reader,
)
from tide_plugin.registry import get_teacher
from tide_plugin.shipped import demo_assets
from tide_plugin.study.models import ModelSpec, load_model
from tide_plugin.study.teachers import study_teacher

PINNED_ROWS, PINNED = 6, {  # the first 6 demo held-out rows, K = 2, seed 1234, block 32, linear
    # (bits per byte, standard error) as study/bpb.heldout_bpb gave them before the move
    "teacher_A": (2.5530450841352303, 0.18747012785389539),
    "student": (2.813855516514378, 0.21609802079801177),
    "teacher_B": (2.1051926422544143, 0.1126008338137991),
}


@pytest.fixture(scope="module")
def shipped():
    out = {}
    for which in ("A", "B"):
        a = demo_assets(which)
        out[which] = {"assets": a, "rows": load_jsonl(a["heldout"]),
                      "student_tok": load_tokenizer(a["student_tokenizer"]),
                      "teacher_tok": load_tokenizer(a["teacher_tokenizer"])}
    return out


def _tiny(tok, arch="qwen3"):
    spec = ModelSpec(arch, hidden=32, layers=1, heads=4, kv_heads=2, intermediate=32,
                     experts=2 if arch != "qwen3" else 0, experts_per_token=1)
    return spec.build(tok, seed=0).eval()


def test_shipped_models_score_as_before_the_move(shipped):
    """Teacher A through the registered `bidirectional` adapter, teacher B through `block`
    (x0_xt, blocked padding, as the study trained it), the student init through its
    BD3LM forward: the same numbers to the last digit as the estimator gave with its own
    model-kind switch and the implied linear schedule."""
    got = {}
    for which in ("A", "B"):
        s = shipped[which]
        rows = s["rows"][:PINNED_ROWS]
        teacher = study_teacher(which, load_model(s["assets"]["teacher_model_name_or_path"]), 32)
        got[f"teacher_{which}"] = score_teacher(teacher, encode_heldout(rows, s["teacher_tok"]), s["teacher_tok"],
                                                samples=2, seed=1234)
    s = shipped["A"]
    student = load_model(s["assets"]["model_name_or_path"])
    got["student"] = score_student(student, encode_heldout(s["rows"][:PINNED_ROWS], s["student_tok"]),
                                   s["student_tok"], block_size=32, samples=2, seed=1234, schedule="linear")
    for name, (bpb, se) in PINNED.items():
        assert (got[name].bpb, got[name].se) == pytest.approx((bpb, se), rel=1e-9, abs=0), name


@torch.no_grad()
def test_bpb_matches_a_hand_computation(shipped):
    """A bidirectional teacher read through its adapter: the 1/t-weighted NLL of the masked
    targets, model run by hand with full attention."""
    tok = shipped["A"]["teacher_tok"]
    model = _tiny(tok, "qwen3_moe")
    data = encode_heldout(shipped["A"]["rows"][:3], tok)
    got = heldout_bpb(teacher_reader(get_teacher("bidirectional", model=model)), data, mask_id=tok.mask_token_id,
                      pad_id=tok.pad_token_id, samples=3, seed=7)
    nats = []
    for i, enc in enumerate(data):
        t, _, masked = sequence_noise(i, torch.tensor(enc.targets), 3, 7, 1e-3)
        total = 0.0
        for k in range(3):
            ids = torch.tensor(enc.ids)
            noisy = torch.where(masked[k], torch.tensor(tok.mask_token_id), ids)
            full = torch.ones(1, 1, len(ids), len(ids), dtype=torch.bool)  # every token sees every token
            logits = model(input_ids=noisy[None], attention_mask=full, position_ids=torch.arange(len(ids))[None]).logits[0]
            logp = torch.log_softmax(logits.double(), -1)
            total += float(-logp[masked[k], ids[masked[k]]].sum()) / float(t[k])
        nats.append(total / 3)
    want = sum(nats) / math.log(2) / sum(e.nbytes for e in data)
    assert got.bpb == pytest.approx(want, rel=1e-4)
    assert got.nats == pytest.approx(nats, rel=1e-4)


def test_bpb_does_not_depend_on_batching(shipped):
    tok = shipped["A"]["student_tok"]
    model = _tiny(tok)
    data = encode_heldout(shipped["A"]["rows"][:4], tok)
    kw = dict(mask_id=tok.mask_token_id, pad_id=tok.pad_token_id, samples=2, seed=3)
    one = heldout_bpb(student_reader(model, 32), data, max_tokens=1, **kw)
    many = heldout_bpb(student_reader(model, 32), data, max_tokens=100_000, **kw)
    assert one.nats == pytest.approx(many.nats, rel=1e-4)


def test_the_student_read_as_a_registered_block_adapter_scores_the_same(shipped):
    """No model kind: the student's forward and the registered `block` adapter in the
    student's order (x_t first, blocked padding) read the same model alike."""
    tok = shipped["A"]["student_tok"]
    model = _tiny(tok)
    data = encode_heldout(shipped["A"]["rows"][:4], tok)
    student = score_student(model, data, tok, block_size=32, samples=2, seed=5)
    adapter = get_teacher("block", model=copy.deepcopy(model), concat_order="xt_x0", block_size=32,
                          block_padding="blocked")
    teacher = score_teacher(adapter, data, tok, samples=2, seed=5)
    assert teacher.nats == pytest.approx(student.nats, rel=1e-5)
    assert model.training is False and all(p.requires_grad for p in model.parameters())  # scoring froze nothing


def test_scoring_the_student_restores_its_training_mode(shipped):
    tok = shipped["A"]["student_tok"]
    model = _tiny(tok).train()
    score_student(model, encode_heldout(shipped["A"]["rows"][:1], tok), tok, block_size=32, samples=1)
    assert model.training


class _Uniform(torch.nn.Module):
    """Equal logits everywhere: -log p = log V for every token."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, noisy, clean, valid):  # noqa: ARG002
        return torch.zeros(*noisy.shape, self.vocab)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_bpb_weighting_is_unbiased_for_a_known_model_under_every_schedule(schedule):
    """For a uniform model the NELBO is (targets x ln V) under any schedule
    (the integral of -alpha' is 1); the estimate with the schedule's own weight and mask
    rate must agree within its standard error."""
    vocab = 50
    data = [Encoded(ids=list(range(3, 40)), targets=[j >= 5 for j in range(37)], nbytes=90) for _ in range(40)]
    got = heldout_bpb(Reader(_Uniform(vocab), "cpu"), data, mask_id=1, pad_id=0, samples=16, seed=0, schedule=schedule)
    want = 32 * math.log2(vocab) / 90
    assert abs(got.bpb - want) < 4 * got.se and got.se < 0.05 * want


def _peek(noisy, clean, valid):
    """More mass on the right token the more of the row is clean (a function of x_t and x0)."""
    clean_frac = ((noisy == clean) & valid).sum(1, keepdim=True) / valid.sum(1, keepdim=True)
    logits = torch.zeros(*noisy.shape, 50)
    return logits.scatter(-1, clean[..., None], (6.0 * clean_frac)[..., None].expand(*clean.shape, 1))


def test_the_nelbo_does_not_depend_on_the_schedule():
    """The continuous-time NELBO is the same under every schedule with alpha(0) = 1 and
    alpha(1) = 0 (substitute a = alpha(t)), for a model whose loss changes with the mask
    level; weighting the cosine schedule's masks by 1/p alone, or by the linear 1/t, would
    put it about 0.25 bits per byte off."""
    data = [Encoded(ids=[3 + (j * 7 + i) % 40 for j in range(37)], targets=[j >= 5 for j in range(37)], nbytes=90)
            for i in range(60)]
    kw = dict(mask_id=1, pad_id=0, samples=16, seed=0)
    linear = heldout_bpb(Reader(_peek, "cpu"), data, schedule="linear", **kw)
    cosine = heldout_bpb(Reader(_peek, "cpu"), data, schedule="cosine", **kw)
    assert abs(linear.bpb - cosine.bpb) < 3 * math.hypot(linear.se, cosine.se) < 0.05


def test_the_mask_rate_follows_the_schedule():
    targets = torch.ones(4000, dtype=torch.bool)
    for schedule, rate in (("linear", lambda t: t), ("cosine", lambda t: math.sin(math.pi / 2 * t))):
        t, p, masked = sequence_noise(0, targets, 4, 11, 1e-3, schedule)
        assert p.tolist() == pytest.approx([rate(float(x)) for x in t], rel=1e-12)
        assert masked.double().mean(1).tolist() == pytest.approx(p.tolist(), abs=0.03)


def test_heldout_scorer_reads_each_side_with_its_own_tokenizer(shipped):
    s = shipped["B"]
    rows = s["rows"][:2]
    student, teacher = heldout_scorer(rows, s["student_tok"], s["teacher_tok"], block_size=32, samples=1)
    model = _tiny(s["student_tok"])
    got = student(model)
    assert got.nats == score_student(model, encode_heldout(rows, s["student_tok"]), s["student_tok"],
                                     block_size=32, samples=1).nats
    adapter = get_teacher("block", model=_tiny(s["teacher_tok"]), concat_order="x0_xt", block_size=32)
    assert teacher(adapter).nbytes == got.nbytes  # the same bytes, whatever the tokenizer


def test_bad_settings_fail_in_one_line():
    data = [Encoded(ids=[3, 4], targets=[False, True], nbytes=1)]
    reader = Reader(_Uniform(8), "cpu")
    with pytest.raises(ValueError, match="samples 0 must be >= 1"):
        heldout_bpb(reader, data, mask_id=1, pad_id=0, samples=0)
    with pytest.raises(ValueError, match="held-out set is empty"):
        heldout_bpb(reader, [], mask_id=1, pad_id=0)
    with pytest.raises(ValueError, match=r"eps 0 must lie in \(0, 1\)"):
        heldout_bpb(reader, data, mask_id=1, pad_id=0, eps=0)
    with pytest.raises(KeyError, match="unknown masking_schedule 'cosin'"):
        heldout_bpb(reader, data, mask_id=1, pad_id=0, schedule="cosin")


def test_the_trainers_scorer_is_the_student_score(shipped):
    from tide_plugin.training.heldout import heldout_bpb_scorer

    tok = shipped["A"]["student_tok"]
    model = _tiny(tok)
    rows = shipped["A"]["rows"][:3]
    got = heldout_bpb_scorer(rows, tok, block_size=32)(model)
    assert got.nats == score_student(model, encode_heldout(rows, tok), tok, block_size=32, samples=2, seed=1234).nats
    with pytest.raises(ValueError, match="need the student tokenizer"):
        heldout_bpb_scorer(rows, None, block_size=32)
    with pytest.raises(ValueError, match="held-out set is empty"):
        heldout_bpb_scorer([], tok, block_size=32)


def test_the_curve_callback_scores_every_few_steps_but_the_last():
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from tide_plugin.training.heldout import heldout_callback

    scored = []

    def score(model):
        scored.append(model)
        return BpbResult(bpb=1.5, se=0.1, nats=[1.0], nbytes=[1])

    curve: list = []
    callback = heldout_callback(score, 2, curve)
    state, args = TrainerState(max_steps=6), TrainingArguments(output_dir="unused", report_to=[])
    for step in range(1, 7):
        state.global_step = step
        callback.on_step_end(args, state, TrainerControl(), model="m")
    assert curve == [(2, 1.5), (4, 1.5)] and scored == ["m", "m"]  # step 6 is the run's own final score
