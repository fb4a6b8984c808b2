"""The vocabulary projection W (teacher tokens -> student tokens): the building rule on
real tokenizers, its coverage report, storage next to a dataset, ``project_rows``, and
W reaching an objective that requires ``projection`` in a real run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

from tide_plugin import Objective, PluginSpec, cli, hookimpl
from tide_plugin.alignment import projection as projection_module
from tide_plugin.alignment import projection_build
from tide_plugin.alignment.bytetable import byte_table
from tide_plugin.alignment.metadata import REPORT_FILE
from tide_plugin.alignment.preprocess import DEMO_DATA, load_jsonl, load_tokenizer, preprocess
from tide_plugin.alignment.projection import PROJECTION_FILE, VocabProjection
from tide_plugin.alignment.projection_build import (
    build_projection,
    load_projection,
    projection_for_run,
    projection_report,
)
from tide_plugin.registry import get_registry


@pytest.fixture(scope="module")
def demo():
    """The shipped demo: study tokenizers (teacher A's SentencePiece-style, the student's
    byte-level BPE), the student init, teacher A and its train rows."""
    from tide_plugin.shipped import demo_assets

    assets = demo_assets("A")
    return {**assets, "teacher_tok": load_tokenizer(assets["teacher_tokenizer"]),
            "student_tok": load_tokenizer(assets["student_tokenizer"])}


@pytest.fixture(scope="module")
def no_bytes_student():
    """A real SentencePiece-style (``▁``) tokenizer without byte fallback: a handful of
    ASCII pieces, so many teacher tokens have no student token for their first byte."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, "▁the": 4, "▁t": 5, "t": 6, "h": 7, "e": 8, "▁a": 9}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def _row(w: VocabProjection, u: int) -> dict[int, float]:
    a, b = int(w.indptr[u]), int(w.indptr[u + 1])
    return dict(zip(w.indices[a:b].tolist(), w.values[a:b].tolist()))


def _target(w, teacher, student, token: str) -> str | None:
    row = _row(w, teacher.convert_tokens_to_ids(token))
    assert len(row) <= 1 and all(v == 1.0 for v in row.values())
    return student.convert_ids_to_tokens(next(iter(row))) if row else None


# -- the rule --------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["qwen", "mistral", "study_teacher", "study_student"])
def test_identical_tokenizers_give_the_identity(which, request, demo):
    tok = {"study_teacher": demo["teacher_tok"], "study_student": demo["student_tok"]}.get(which)
    tok = tok if tok is not None else request.getfixturevalue(which)
    w = build_projection(tok, tok)
    special = byte_table(tok).special
    assert w.shape == (len(tok), len(tok))
    kept = ~special
    kept[[i for i in (tok.eos_token_id, tok.bos_token_id) if i is not None]] = True  # special, mapped by role
    counts = (w.indptr[1:] - w.indptr[:-1]).numpy()
    assert np.array_equal(counts, kept.astype(np.int64))  # one entry on every kept row, none elsewhere
    assert np.array_equal(w.rows.numpy(), np.flatnonzero(kept))
    assert np.array_equal(w.indices.numpy(), np.flatnonzero(kept)) and bool((w.values == 1).all())
    report = projection_report(w, tok, tok)
    assert report["exact_rows"] == int((~special).sum())
    assert report["mapped_rows"] + report["empty_rows"]["special"] == len(tok)


def test_real_pair_hand_checked(qwen, mistral):
    mq = build_projection(mistral, qwen)
    # the leading-space conventions meet: "▁the" and "Ġthe" both spell b" the"
    assert _target(mq, mistral, qwen, "▁the") == "Ġthe"
    assert _target(mq, mistral, qwen, "▁") == "Ġ"
    # byte fallback: <0xE2> is the byte 0xE2, Qwen's byte-level token for it
    assert byte_table(qwen).pieces[qwen.convert_tokens_to_ids(_target(mq, mistral, qwen, "<0xE2>"))] == b"\xe2"
    # special tokens by role: EOS to EOS; Qwen has no BOS, so <s> (and <unk>) are dropped
    assert _target(mq, mistral, qwen, "</s>") == qwen.eos_token == "<|im_end|>"
    assert _target(mq, mistral, qwen, "<s>") is None and _target(mq, mistral, qwen, "<unk>") is None
    qm = build_projection(qwen, mistral)
    assert _target(qm, qwen, mistral, "Ġthe") == "▁the"
    assert _target(qm, qwen, mistral, "ĠSupplementary") == "▁Supp"  # Mistral's longest prefix of " Supplementary"
    assert _target(qm, qwen, mistral, "â") == "<0xE2>"  # a lone byte: only the byte-fallback piece spells it
    assert _target(qm, qwen, mistral, "<think>") == "<"  # an added (not special) token spells its text
    assert _target(qm, qwen, mistral, "<|im_end|>") == "</s>"
    assert _target(qm, qwen, mistral, "<|endoftext|>") is None and _target(qm, qwen, mistral, "<|im_start|>") is None
    for w, t, s in ((mq, mistral, qwen), (qm, qwen, mistral)):
        report = projection_report(w, t, s)
        specials = int(byte_table(t).special.sum())
        assert report["special_mapped"] == 1 and report["empty_rows"]["special"] == specials - 1
        assert report["empty_rows"]["no_student_prefix"] == report["empty_rows"]["no_bytes"] == 0
        assert report["row_coverage"] == pytest.approx(1 - (specials - 1) / len(t))
        assert report["fingerprint"] == w.fingerprint and report["fingerprint"].startswith("sha256:")
    assert mq.fingerprint != qm.fingerprint


def test_every_mapped_student_token_is_the_longest_prefix(qwen, mistral):
    """Brute force over a sample of teacher tokens: the target's bytes begin the teacher
    token's bytes, and no longer student token does."""
    w = build_projection(qwen, mistral)
    t_tab, s_tab = byte_table(qwen), byte_table(mistral)
    pieces = sorted({p for i, p in enumerate(s_tab.pieces) if p and not s_tab.special[i]}, key=len, reverse=True)
    for u in range(0, len(qwen), 997):
        row, piece = _row(w, u), t_tab.pieces[u]
        if t_tab.special[u]:
            continue
        ((s, _),) = row.items()
        longest = next(p for p in pieces if piece.startswith(p))
        assert s_tab.pieces[s] == longest, (qwen.convert_ids_to_tokens(u), mistral.convert_ids_to_tokens(s))


def test_empty_rows_are_counted_by_reason(qwen, no_bytes_student):
    w = build_projection(qwen, no_bytes_student)
    tok = no_bytes_student
    assert _target(w, qwen, tok, "Ġthe") == "▁the" and _target(w, qwen, tok, "Ġthere") == "▁the"
    assert _target(w, qwen, tok, "Ġto") == "▁t" and _target(w, qwen, tok, "Ġ") == "▁"
    assert _target(w, qwen, tok, "x") is None and _target(w, qwen, tok, "â") is None  # no piece starts with them
    assert _target(w, qwen, tok, "<|im_end|>") == "</s>"
    report = projection_report(w, qwen, tok)
    empty = report["empty_rows"]
    assert empty["no_student_prefix"] > 50_000 and empty["no_bytes"] == 0
    assert report["mapped_rows"] + sum(empty.values()) == len(qwen)
    padded = w.padded(len(qwen) + 7, len(tok) + 3)
    grown = projection_report(padded, qwen, tok)
    assert grown["empty_rows"]["beyond_tokenizer"] == 7 and grown["mapped_rows"] == report["mapped_rows"]
    assert grown["row_coverage"] == pytest.approx(report["mapped_rows"] / (len(qwen) + 7))
    line = projection_build.format_projection_report(report)
    assert "\n" not in line and "no student prefix" in line and report["fingerprint"] in line


# -- project_rows --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_project_rows_equals_the_dense_product_with_its_gradient(dtype, demo):
    w = build_projection(demo["teacher_tok"], demo["student_tok"]).padded(2050, 2053)
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(7, 2050, generator=g) * 3, -1).to(dtype).requires_grad_()
    up = torch.randn(7, 2053, generator=g)
    out = w.project_rows(probs)
    dense = probs.float() @ w.dense()
    assert out.dtype == torch.float32 and out.shape == (7, 2053)
    torch.testing.assert_close(out, dense.detach(), rtol=1e-6, atol=1e-7)
    (grad,) = torch.autograd.grad((out * up).sum(), probs)
    (want,) = torch.autograd.grad((dense * up).sum(), probs)
    torch.testing.assert_close(grad, want)
    # the mass W keeps: every row but the dropped special tokens' and the padding's
    # a W whose rows spread over several student tokens, with weights other than 1
    spread = VocabProjection.from_dense(torch.rand(2050, 2053, generator=g) * (torch.rand(2050, 2053, generator=g) < 0.01))
    torch.testing.assert_close(spread.project_rows(probs), probs.float().detach() @ spread.dense(), rtol=1e-5, atol=1e-7)
    kept = out.sum(1)
    dropped = torch.ones(2050, dtype=torch.bool)
    dropped[w.rows] = False
    assert 0 < int(dropped.sum()) < 10
    torch.testing.assert_close(kept, probs.float()[:, ~dropped].sum(1).detach(), rtol=1e-5, atol=1e-6)


def test_project_rows_on_the_real_projection_is_exact_and_bounded(qwen, mistral, monkeypatch):
    w = build_projection(qwen, mistral)
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(5, len(qwen), generator=g) * 4, -1)
    want = np.zeros((5, len(mistral)))  # plain: scatter every teacher token's mass onto its student token
    np.add.at(want.T, w.indices.numpy(), (probs.double().numpy()[:, w.rows.numpy()] * w.values.double().numpy()).T)
    whole = w.project_rows(probs)
    # float32 sums of up to ~10^4 teacher tokens per student column against float64
    np.testing.assert_allclose(whole.double().numpy(), want, rtol=1e-4, atol=1e-9)
    monkeypatch.setattr(projection_module, "_CHUNK_ELEMENTS", 2 * w.values.numel())  # two rows at a time
    assert torch.equal(w.project_rows(probs), whole)
    with pytest.raises(ValueError, match=r"probs must be \[N, V_T\] = \[N, 151670\], got \[5, 7\]"):
        w.project_rows(probs[:, :7])


# -- storage -------------------------------------------------------------------------------------
def test_save_load_round_trip_and_refusals(tmp_path, qwen, mistral, demo):
    w = build_projection(demo["teacher_tok"], demo["student_tok"])
    path = w.save(tmp_path / "data")
    assert path.name == PROJECTION_FILE
    back = VocabProjection.load(tmp_path / "data")
    for name in ("indptr", "indices", "values"):
        assert torch.equal(getattr(back, name), getattr(w, name))
    assert back.shape == w.shape and back.fingerprint == w.fingerprint
    assert load_projection(tmp_path / "data", demo["teacher_tok"], demo["student_tok"]).fingerprint == w.fingerprint
    assert load_projection(tmp_path / "elsewhere", demo["teacher_tok"], demo["student_tok"]) is None
    with pytest.raises(ValueError, match="no vocabulary projection saved"):
        VocabProjection.load(tmp_path / "elsewhere")
    # built for another tokenizer pair: one line naming both of the run's tokenizers
    with pytest.raises(ValueError) as err:
        load_projection(tmp_path / "data", mistral, qwen)
    message = str(err.value)
    assert "\n" not in message and w.fingerprint in message
    assert repr(mistral.name_or_path) in message and repr(qwen.name_or_path) in message
    with pytest.raises(ValueError, match="models' output layers"):
        w.padded(10, 10_000)


def test_preprocess_saves_W_with_the_dataset_and_a_run_loads_it(tmp_path, capsys, qwen, mistral):
    data = tmp_path / "chats.jsonl"
    rows = load_jsonl(DEMO_DATA)[:3]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ds"
    assert cli.main(["preprocess", "--input", str(data), "--output", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    meta = json.loads((out / REPORT_FILE).read_text())["projection"]
    w = VocabProjection.load(out)
    assert meta["file"] == PROJECTION_FILE and meta["fingerprint"] == w.fingerprint
    assert meta["shape"] == [len(mistral), len(qwen)] and meta["row_coverage"] > 0.999
    assert f"vocabulary projection W [{len(mistral)} x {len(qwen)}]" in printed and w.fingerprint in printed
    said: list[str] = []
    loaded = projection_for_run(mistral, qwen, data_dir=out, say=said.append)
    assert torch.equal(loaded.indices, w.indices) and len(said) == 1 and f"loaded from {str(out)!r}" in said[0]
    with pytest.raises(ValueError, match="built for other tokenizers"):
        projection_for_run(qwen, mistral, data_dir=out, say=None)


# -- W reaches the objective --------------------------------------------------------------------
SEEN: list[dict] = []


@dataclass(frozen=True)
class _ProbeConfig:
    weight: float = 1.0
    requirements: ClassVar[frozenset] = frozenset({"chunks", "projection"})
    unit: ClassVar[str] = "active_chunks"


@dataclass(frozen=True)
class _ChunksOnlyConfig(_ProbeConfig):
    requirements: ClassVar[frozenset] = frozenset({"chunks"})


class _Probe(Objective):
    """Records what it receives; its part is the cross-entropy of the student against the
    projected teacher at the first teacher/student positions (a real use of W)."""

    def __init__(self, name, cfg_cls, **config):
        self.name, self.config = name, cfg_cls(**config)

    def forward(self, inputs):
        w, s, t = inputs.projection, inputs.student_logits, inputs.teacher_logits
        SEEN.append({"name": self.name, "projection": w, "student_shape": tuple(s.shape),
                     "teacher_shape": tuple(t.shape), "device": s.device})
        if w is None:
            return {self.name: s.float().sum() * 0.0}
        q = w.project_rows(torch.softmax(t[:, 0].float(), -1))  # [b, V_S]
        return {self.name: -(q * torch.log_softmax(s[:, 0].float(), -1)).sum(-1).mean()}


class _ProbePlugin:
    @hookimpl
    def tide_plugin_objectives(self):
        return [PluginSpec(name="probe_projection", factory=lambda **c: _Probe("probe_projection", _ProbeConfig, **c),
                           config_cls=_ProbeConfig),
                PluginSpec(name="probe_chunks", factory=lambda **c: _Probe("probe_chunks", _ChunksOnlyConfig, **c),
                           config_cls=_ChunksOnlyConfig)]


@pytest.fixture()
def probes():
    get_registry().register(_ProbePlugin(), distribution="tide-test-probes")
    SEEN.clear()
    yield SEEN
    get_registry(reload=True)


def _demo_run(tmp_path, demo, objective: str, extra_student_rows: int = 0, **kw):
    from tide_plugin.checkpoints import load_student
    from tide_plugin.training import DistillConfig, build_trainer

    rows = load_jsonl(demo["data"])[:8]
    ds, _ = preprocess(rows, demo["teacher_tok"], demo["student_tok"], pipeline="cross", max_length=96,
                       teacher_max_length=128, progress=False)
    config = DistillConfig(output_dir=str(tmp_path / "run"), objective=objective, pipeline="cross",
                           teacher="bidirectional", block_size=32, max_length=96, teacher_max_length=128,
                           max_steps=2, per_device_train_batch_size=4, logging_steps=1, save_strategy="no",
                           report_to="none", disable_tqdm=True, use_cpu=True, dataloader_pin_memory=False)
    student = load_student(demo["model_name_or_path"])
    if extra_student_rows:  # an output layer wider than the tokenizer, as Qwen's checkpoints have
        student.resize_token_embeddings(len(demo["student_tok"]) + extra_student_rows)
    trainer = build_trainer(config, student=student, teacher_model=demo["teacher_model_name_or_path"],
                            train_dataset=ds, student_tokenizer=demo["student_tok"],
                            teacher_tokenizer=demo["teacher_tok"], backend="transformers", **kw)
    trainer.train()
    return trainer, student


def test_a_run_hands_W_to_an_objective_that_requires_it(tmp_path, demo, probes, capsys):
    trainer, student = _demo_run(tmp_path, demo, "probe_projection+reverse_calm", extra_student_rows=8)
    printed = capsys.readouterr().out
    assert trainer.pipeline_info.has_projection and len(probes) == 2
    v_s = student.get_output_embeddings().weight.shape[0]
    assert v_s == len(demo["student_tok"]) + 8
    v_t = trainer.teacher.model.get_output_embeddings().weight.shape[0]
    for seen in probes:
        w = seen["projection"]
        assert isinstance(w, VocabProjection) and w.shape == (v_t, v_s)
        assert seen["teacher_shape"][-1] == v_t and seen["student_shape"][-1] == v_s
        assert w.device == seen["device"]
    assert w.fingerprint == projection_build.projection_fingerprint(demo["teacher_tok"], demo["student_tok"])
    assert sum("vocabulary projection W" in line for line in printed.splitlines()) == 1
    history = [h for h in trainer.state.log_history if "probe_projection" in h]
    assert len(history) == 2 and all(h["probe_projection"] > 0 for h in history)


def test_objectives_that_do_not_require_W_build_none(tmp_path, demo, probes, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("W built for an objective that does not require it")

    monkeypatch.setattr(projection_build, "build_projection", refuse)
    w = VocabProjection.from_dense(torch.eye(4))
    trainer, _ = _demo_run(tmp_path, demo, "probe_chunks", projection=w)  # given, yet not required: dropped
    assert not trainer.pipeline_info.has_projection and trainer.projection is None
    assert probes and all(seen["projection"] is None for seen in probes)


def test_a_projection_objective_without_tokenizers_is_refused(tmp_path, probes):
    from tide_plugin.tiny import tiny_qwen3
    from tide_plugin.training import DistillConfig, build_trainer

    config = DistillConfig(output_dir=str(tmp_path), objective="probe_projection", pipeline="cross", use_cpu=True)
    with pytest.raises(ValueError, match="needs the vocabulary projection W") as err:
        build_trainer(config, student=tiny_qwen3(16), teacher_model=tiny_qwen3(16), train_dataset=[],
                      student_mask_id=15, student_eos_id=14)
    assert "\n" not in str(err.value)


def test_a_study_arm_whose_objective_requires_W_gets_it(tmp_path, demo, probes):
    from pathlib import Path

    from tide_plugin.checkpoints import load_student
    from tide_plugin.study.arms import ArmSpec, RunSettings, run_arm
    from tide_plugin.study.models import load_model
    from tide_plugin.study.tokenizers import load_tokenizers

    toks = load_tokenizers(Path(demo["student_tokenizer"]).parent)
    rows, _ = preprocess(load_jsonl(demo["data"])[:4], toks["cross"], toks["student"], pipeline="cross",
                         max_length=96, teacher_max_length=128, progress=False)
    settings = RunSettings(steps=1, batch_size=2, lr=1e-4, max_length=96, teacher_max_length=128)
    run_arm(ArmSpec("A", "probe_projection"), settings, student=load_student(demo["model_name_or_path"]),
            teacher=load_model(demo["teacher_model_name_or_path"]), teacher_mask_id=toks["cross"].mask_token_id,
            rows=list(rows), toks=toks, seed=0)
    assert probes and all(isinstance(seen["projection"], VocabProjection) for seen in probes)
    assert probes[0]["projection"].fingerprint == projection_build.projection_fingerprint(toks["cross"], toks["student"])
