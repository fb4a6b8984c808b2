"""Decoding strategies (the ``decoder`` plugin kind): their choices on given
confidences, their generations against the paper's protocol, the cache and the
model-call count, early block ends at stop tokens, and a third-party decoder
found by name through a real installed distribution."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from tide_plugin.eval.decoders import FixedK, OnePerStep, Threshold, get_decoder, parse_decoder_args
from tide_plugin.eval.sampler import SamplingStats, generate
from tide_plugin.hookspecs import DecoderProtocol as Decoder
from tide_plugin.registry import UnknownPluginError, available, get_registry

from test_sampler import MASK, PROMPTS, tiny_student

INF = float("inf")


@pytest.fixture(scope="module")
def student():
    return tiny_student()


@pytest.fixture(scope="module")
def peaked():
    """A student whose predictions are confident (scaled output layer), so a
    threshold commits several positions per call."""
    model = tiny_student(seed=1)
    with torch.no_grad():
        model.lm_head.weight.mul_(6.0)
    return model


def run(model, prompts, **kw):
    kw.setdefault("mask_id", MASK)
    kw.setdefault("block_size", 8)
    kw.setdefault("max_new_tokens", 24)
    kw.setdefault("stop_token_ids", ())
    return generate(model, prompts, **kw)


# ------------------------------------------------------------ choices


def test_threshold_commits_every_confident_masked_position_and_at_least_one():
    dec = Threshold(threshold=0.9)
    conf = torch.tensor([[0.95, 0.5, 0.92, -INF], [0.3, 0.6, 0.1, 0.2], [-INF, -INF, -INF, -INF]])
    masked = conf > -INF
    commit = dec.select(conf, masked, call=0, budget=4)
    assert commit.tolist() == [[True, False, True, False], [False, True, False, False], [False] * 4]
    assert dec.calls(32, 32) is None


def test_fixed_k_commits_the_k_most_confident_and_fewer_at_the_end():
    dec = FixedK(k=2)
    conf = torch.tensor([[0.1, 0.7, -INF, 0.4, 0.9], [-INF, -INF, -INF, 0.2, -INF]])
    commit = dec.select(conf, conf > -INF, call=0, budget=5)
    assert commit.tolist() == [[False, True, False, False, True], [False, False, False, True, False]]
    assert [FixedK(k=k).calls(32, 32) for k in (1, 3, 32, 40)] == [32, 11, 1, 1]


def test_one_per_step_follows_the_schedule():
    dec = OnePerStep()
    conf = torch.tensor([[0.1, 0.7, 0.3, 0.4, 0.9, 0.2, 0.8, 0.5]])
    # 8 positions over 3 calls: 3, 3, 2 tokens
    assert dec.select(conf, conf > -INF, call=0, budget=3).sum() == 3
    assert dec.select(conf, conf > -INF, call=2, budget=3).sum() == 2
    assert dec.calls(8, 3) == 3


def test_builtins_are_registered_decoders_that_satisfy_the_protocol():
    found = available("decoder")
    assert {"one_per_step", "threshold", "fixed_k"} <= set(found)
    assert all(found[n].distribution == "tide-plugin" for n in ("one_per_step", "threshold", "fixed_k"))
    for name in found:
        assert isinstance(get_decoder(name), Decoder)


def test_bad_names_and_options_are_named():
    with pytest.raises(UnknownPluginError, match="unknown decoder 'treshold'. Did you mean 'threshold'"):
        get_decoder("treshold")
    with pytest.raises(ValueError, match=r"threshold must be a number in \(0, 1\], got 1.5"):
        get_decoder("threshold", threshold=1.5)
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        get_decoder("fixed_k", k=0)
    with pytest.raises(ValueError, match="unknown option 'threshold' for decoder 'fixed_k'; valid: k"):
        get_decoder("fixed_k", threshold=0.9)
    with pytest.raises(ValueError, match="'k4' is not KEY=VALUE"):
        parse_decoder_args(["k4"])
    assert parse_decoder_args("k=4,name=x") == {"k": 4, "name": "x"}


# ------------------------------------------------------------ generations


def test_threshold_one_and_fixed_k_one_are_the_paper_protocol(student):
    base_stats = SamplingStats()
    base = run(student, PROMPTS, stats=base_stats)
    assert base_stats.calls == 24 and base_stats.tokens_per_call == 1.0
    for decoder, options in (("threshold", {"threshold": 1.0}), ("fixed_k", {"k": 1})):
        stats = SamplingStats()
        assert run(student, PROMPTS, decoder=decoder, decoder_options=options, stats=stats) == base
        assert stats.calls == 24 and stats.tokens == 24 * len(PROMPTS)
        assert stats.decoder["decoder"] == decoder


def test_fixed_k_equals_the_schedule_with_as_many_steps(student):
    assert run(student, PROMPTS, decoder="fixed_k", decoder_options={"k": 2}) == run(student, PROMPTS, steps=12)


@pytest.mark.parametrize("decoder,options", [("threshold", {"threshold": 0.5}), ("fixed_k", {"k": 3})])
def test_parallel_decoders_keep_the_cache_exact_and_count_their_calls(peaked, decoder, options):
    results = {}
    for use_cache in (True, False):
        calls: list[int] = []
        stats = SamplingStats()
        out = run(peaked, PROMPTS, decoder=decoder, decoder_options=options, use_cache=use_cache,
                  on_forward=calls.append, stats=stats)
        assert all(len(o) == 24 and MASK not in o for o in out)
        assert stats.calls == len(calls) and stats.tokens == 24 * len(PROMPTS)
        results[use_cache] = (out, len(calls))
    assert results[True] == results[False]
    assert results[True][1] < 24
    if decoder == "fixed_k":  # 8-token blocks in calls of 3, 3, 2
        assert results[True][1] == 9


def test_threshold_commits_several_tokens_per_call_and_batching_changes_nothing(peaked):
    stats = SamplingStats()
    batched = run(peaked, PROMPTS, decoder="threshold", decoder_options={"threshold": 0.5}, stats=stats)
    assert stats.tokens_per_call > 1.5
    alone = [run(peaked, [p], decoder="threshold", decoder_options={"threshold": 0.5})[0] for p in PROMPTS]
    assert batched == alone
    lower = SamplingStats()
    run(peaked, PROMPTS, decoder="threshold", decoder_options={"threshold": 0.2}, stats=lower)
    assert lower.calls < stats.calls


class _Recording:
    """A real decoder that records which positions each call committed."""

    name = "recording"

    def __init__(self, inner):
        self.inner, self.commits = inner, []

    def calls(self, block_length, budget):
        return self.inner.calls(block_length, budget)

    def select(self, confidence, masked, *, call, budget):
        commit = self.inner.select(confidence, masked, call=call, budget=budget)
        self.commits.append(commit[0].clone())
        return commit

    def describe(self):
        return {}


@pytest.mark.parametrize("decoder", [OnePerStep(), Threshold(threshold=0.5)])
def test_a_block_ends_as_soon_as_everything_before_the_stop_token_is_committed(peaked, decoder):
    prompt = PROMPTS[0]
    rec = _Recording(decoder)
    full = run(peaked, [prompt], decoder=rec)[0]
    stop = full[10]  # a token of the second block
    first = full.index(stop)
    block, offset = divmod(first, 8)
    # calls of the full run in the blocks before, then until positions 0..offset of the stop's block are set
    per_block, calls_before, seen = [], 0, 0
    for commit in rec.commits:
        if seen == 0:
            per_block.append([])
        per_block[-1].append(commit)
        seen = (seen + int(commit.sum())) % 8
    calls_before = sum(len(c) for c in per_block[:block])
    done = torch.zeros(8, dtype=torch.bool)
    for i, commit in enumerate(per_block[block]):
        done |= commit
        if done[: offset + 1].all():
            expected = calls_before + i + 1
            break
    calls: list[int] = []
    out = run(peaked, [prompt], decoder=decoder, stop_token_ids=[stop], on_forward=calls.append)[0]
    assert out == full[:first]
    assert len(calls) == expected


def test_a_decoder_that_commits_nothing_is_reported(student):
    class Lazy(_Recording):
        def select(self, confidence, masked, *, call, budget):
            return torch.zeros_like(masked)

    with pytest.raises(RuntimeError, match="committed nothing in a row with masked positions"):
        run(student, PROMPTS, decoder=Lazy(Threshold()))
    with pytest.raises(ValueError, match="go with a decoder name"):
        run(student, PROMPTS, decoder=Threshold(), decoder_options={"threshold": 0.5})


# ------------------------------------------------------------ third-party decoder

_PLUGIN = '''
import torch
from tide_plugin import PluginSpec, hookimpl


class LeftToRight:
    """Commits the leftmost masked position: autoregressive order inside a block."""

    name = "left_to_right"

    def __init__(self, width=1):
        self.width = width

    def calls(self, block_length, budget):
        return -(-block_length // self.width)

    def select(self, confidence, masked, *, call, budget):
        return masked & (masked.long().cumsum(-1) <= self.width)

    def describe(self):
        return {"width": self.width}


@hookimpl
def tide_plugin_decoders():
    return [PluginSpec(name="left_to_right", factory=LeftToRight, summary="leftmost masked position first")]
'''


@pytest.fixture
def third_party_decoder(tmp_path, monkeypatch):
    info = tmp_path / "tide_test_decoders-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tide-test-decoders\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[tide_plugin]\nleft = tide_test_left_to_right\n")
    (tmp_path / "tide_test_left_to_right.py").write_text(textwrap.dedent(_PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    get_registry(reload=True)
    yield
    monkeypatch.undo()
    sys.modules.pop("tide_test_left_to_right", None)
    get_registry(reload=True)


def test_a_third_party_decoder_is_selected_by_name(third_party_decoder, student):
    info = available("decoder")["left_to_right"]
    assert info.distribution == "tide-test-decoders"
    rec = _Recording(get_decoder("left_to_right"))
    out = run(student, [PROMPTS[0]], decoder=rec)
    assert [c.nonzero().flatten().tolist() for c in rec.commits[:8]] == [[i] for i in range(8)]
    stats = SamplingStats()
    assert run(student, [PROMPTS[0]], decoder="left_to_right", stats=stats) == out
    assert stats.decoder == {"decoder": "left_to_right", "width": 1}
    wide = SamplingStats()
    run(student, [PROMPTS[0]], decoder="left_to_right", decoder_options={"width": 4}, stats=wide)
    assert wide.calls == 6 and wide.tokens_per_call == 4.0


# ------------------------------------------------------------ tide eval and the lm-eval model


def test_the_lm_eval_model_decodes_with_the_named_decoder_and_reports_it(student_dir):
    from lm_eval.api.instance import Instance

    from tide_plugin.eval.lm_eval_model import TideBD3LM

    with pytest.raises(ValueError, match="unknown option 'threshold' for decoder 'fixed_k'"):
        TideBD3LM(pretrained=str(student_dir), decoder="fixed_k", threshold=0.5)
    lm = TideBD3LM(pretrained=str(student_dir), dtype="float32", batch_size=2, decoder="fixed_k", decoder_args="k=4")
    req = Instance(request_type="generate_until", doc={}, arguments=("def f(x):\n", {"until": [], "max_gen_toks": 32}),
                   idx=0)
    lm.generate_until([req, req], disable_tqdm=True)
    summary = lm.sampler_stats.as_dict()
    assert summary["decoder"] == "fixed_k" and summary["k"] == 4
    assert summary["tokens_per_call"] == 4.0 and summary["model_calls"] == 8  # one batch of 2, 32 tokens in 8 calls


@pytest.mark.slow
def test_tide_eval_with_a_threshold_decoder_reports_tokens_per_call(student_dir, tmp_path, capsys):
    import glob
    import json

    from tide_plugin.cli import main

    assert main(["eval", "--model", str(student_dir), "--tasks", "tide_smoke", "--decoder", "treshold"]) == 2
    assert "unknown decoder 'treshold'. Did you mean 'threshold'" in capsys.readouterr().err
    out = tmp_path / "eval"
    rc = main(["eval", "--model", str(student_dir), "--tasks", "tide_smoke", "--limit", "2", "--batch-size", "2",
               "--gen-kwargs", "max_gen_toks=32", "--output-dir", str(out), "--decoder", "threshold",
               "--threshold", "0.9"])
    assert rc == 0
    [path] = glob.glob(str(out / "results_*.json"))
    sampler = json.loads(open(path).read())["sampler"]
    assert sampler["decoder"] == "threshold" and sampler["threshold"] == 0.9
    assert sampler["tokens_per_call"] >= 1.0 and sampler["model_calls"] >= 1
    assert '"decoder": "threshold"' in capsys.readouterr().out
