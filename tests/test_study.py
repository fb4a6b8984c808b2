"""The study's corpus, tokenizers, bits-per-byte estimator and report statistics."""

from __future__ import annotations

import math

import pytest

from tide_plugin.eval.heldout import encode_targets, ratio_bpb
from tide_plugin.study.corpus import CorpusConfig, build_corpus, is_heldout
from tide_plugin.study.report import delta_row, mean_se, summarise
from tide_plugin.study.tokenizers import train_tokenizers

SMALL = CorpusConfig(packages=("json", "email", "http", "urllib"), sources=("code",), heldout_permille=300)


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(SMALL)


@pytest.fixture(scope="module")
def toks(corpus):
    return train_tokenizers(corpus.train[:120], student_vocab=384, cross_vocab=384)


# -- corpus -------------------------------------------------------------------------
def test_corpus_is_deterministic_and_heldout_modules_are_never_trained_on(corpus):
    again = build_corpus(SMALL)
    assert again.train == corpus.train and again.heldout == corpus.heldout
    train, held = corpus.modules("train"), corpus.modules("heldout")
    assert train and held and not train & held
    assert all(is_heldout(m, SMALL.heldout_permille) for m in held)
    row = corpus.train[0]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    assert row["messages"][0]["content"].startswith(("def ", "async def "))
    assert len(row["messages"][1]["content"]) <= SMALL.max_response_chars
    counts = corpus.counts
    assert counts["rows"] == counts["train_rows"] + counts["heldout_rows"] + counts["capped_rows"]


def test_corpus_caps_are_deterministic_subsets(corpus):
    capped = build_corpus(CorpusConfig(**{**SMALL.__dict__, "max_train_rows": 10, "max_heldout_rows": 3}))
    assert len(capped.train) == 10 and len(capped.heldout) == 3
    assert all(r in corpus.train for r in capped.train)
    assert capped.counts["capped_rows"] == corpus.counts["train_rows"] + corpus.counts["heldout_rows"] - 13


def test_corpus_prose_comes_from_pydoc_topics():
    prose = build_corpus(CorpusConfig(sources=("prose",), max_response_chars=300))
    rows = prose.train + prose.heldout
    assert rows and all(r["module"].startswith("pydoc_data.topics:") for r in rows)
    assert all(len(r["messages"][1]["content"]) <= 300 for r in rows)


def test_corpus_config_rejects_bad_values():
    with pytest.raises(ValueError, match="heldout_permille 0 must lie in"):
        CorpusConfig(heldout_permille=0)
    with pytest.raises(ValueError, match="sources .*'poetry'"):
        CorpusConfig(sources=("poetry",))


# -- tokenizers -----------------------------------------------------------------------
def test_tokenizers_follow_the_pair_conventions(toks):
    from tide_plugin.alignment import byte_table

    student, cross, shared = toks["student"], toks["cross"], toks["shared"]
    assert byte_table(student).kind == "byte_level" and byte_table(student).unicode_form == "NFC"
    assert byte_table(cross).kind == "metaspace"
    text = "x = 'é€😀'  # rare"
    ids = cross(text, add_special_tokens=False)["input_ids"]
    pieces = cross.convert_ids_to_tokens(ids)
    assert any(p.startswith("<0x") for p in pieces)  # byte fallback, not <unk>
    assert cross.unk_token_id not in ids
    assert cross.decode(ids) == text
    assert student.decode(student(text, add_special_tokens=False)["input_ids"]) == text
    assert shared.get_vocab() == student.get_vocab() and shared.chat_template != student.chat_template
    for tok in (student, cross):
        assert tok.mask_token_id is not None and tok.pad_token_id is not None and tok.eos_token_id is not None


def test_targets_spell_exactly_the_assistant_content(toks, corpus):
    from tide_plugin.alignment import byte_table

    for kind in ("student", "cross", "shared"):
        tok = toks[kind]
        for row in corpus.heldout[:5]:
            enc = encode_targets(tok, row["messages"])
            content = row["messages"][1]["content"].encode("utf-8")
            spelled = byte_table(tok).token_bytes([i for i, t in zip(enc.ids, enc.targets) if t])
            assert enc.nbytes == len(content)
            assert spelled.strip() == content.strip(), kind
            assert enc.targets[-1] or enc.ids[-1] != tok.eos_token_id  # the end-of-turn token is scored


# -- bits per byte (the estimator itself: tests/test_heldout.py) ---------------------------------
def test_ratio_bpb_standard_error():
    bpb, se = ratio_bpb([10.0, 20.0, 30.0], [10, 10, 10])
    assert bpb == pytest.approx(2.0 / math.log(2))
    assert se == pytest.approx(math.sqrt(((10 - 20) ** 2 + 0 + (30 - 20) ** 2) / 6) * 3 / 30 / math.log(2))


def test_demo_change_is_paired_over_the_same_sequences():
    from tide_plugin.eval.heldout import BpbResult
    from tide_plugin.eval.heldout import paired_change

    nbytes = [10, 20, 30]
    before = BpbResult(bpb=0.0, se=0.0, nats=[7.0, 15.0, 20.0], nbytes=nbytes)
    after = BpbResult(bpb=0.0, se=0.0, nats=[6.0, 15.5, 18.0], nbytes=nbytes)
    change, se = paired_change(before, after)
    d, r = [-1.0, 0.5, -2.0], -2.5 / 60
    assert change == pytest.approx(r / math.log(2))
    resid = [x - r * b for x, b in zip(d, nbytes)]
    assert se == pytest.approx(math.sqrt(sum(e * e for e in resid) / 6) * 3 / 60 / math.log(2))


def test_demo_arms_bring_the_control_once_and_never_repeat_the_run_objective():
    from tide_plugin.eval.comparison import comparison_arms

    assert comparison_arms(None, "reverse_calm") == [] and comparison_arms(" , ", "reverse_calm") == []
    assert comparison_arms("none,reverse_calm", "reverse_calm") == ["none"]
    assert comparison_arms("calm, ce ,calm", "reverse_calm") == ["none", "calm"]  # the control first, each once
    assert comparison_arms(["calm"], "none") == ["calm"]  # a CE-only run is the control itself


def test_students_are_compared_with_the_control_paired_over_sequences():
    from tide_plugin.eval.heldout import BpbResult
    from tide_plugin.eval.comparison import versus_control
    from tide_plugin.eval.heldout import paired_change

    nbytes = [10, 20, 30]
    control = BpbResult(bpb=1.0, se=0.0, nats=[7.0, 15.0, 20.0], nbytes=nbytes)
    same = BpbResult(bpb=1.0, se=0.0, nats=list(control.nats), nbytes=nbytes)
    other = BpbResult(bpb=0.9, se=0.0, nats=[6.0, 15.5, 18.0], nbytes=nbytes)
    out = versus_control(control, {"a": same, "b": other})
    assert out["a"] == {"bpb_after": 1.0, "minus_ce": 0.0, "minus_ce_se": 0.0}  # exactly, not approximately
    d, se = paired_change(control, other)
    assert out["b"] == {"bpb_after": 0.9, "minus_ce": d, "minus_ce_se": se} and d == pytest.approx(-2.5 / 60 / math.log(2))


@pytest.mark.parametrize(
    ("diff", "se", "words"),
    [
        (-0.0123, 0.0021, "0.0123 ± 0.0021 below the CE-only control (5.9 s.e.): beats it"),
        (0.0050, 0.0010, "0.0050 ± 0.0010 above the CE-only control (5.0 s.e.): worse than it"),
        (-0.0007, 0.0004, "0.0007 ± 0.0004 below the CE-only control (1.8 s.e.): no clear difference"),
        (0.0, 0.0, "identical to the CE-only control"),
    ],
)
def test_verdict_says_in_words_whether_a_student_beat_the_control(diff, se, words):
    from tide_plugin.eval.comparison import verdict

    line = verdict("projected_kl+reverse_calm", {"bpb_after": 3.241, "minus_ce": diff, "minus_ce_se": se})
    assert line == f"projected_kl+reverse_calm: 3.2410 bits/byte, {words}"


def test_demo_assets_name_what_is_missing(monkeypatch, tmp_path):
    import shutil

    from tide_plugin import shipped

    with pytest.raises(ValueError, match="demo teacher 'C' is not one of"):
        shipped.demo_assets("C")
    assert shipped.demo_assets("B")["teacher_tokenizer"].endswith("tokenizer")  # shipped: teacher B's own template
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path)  # a source checkout without the shipped weights
    with pytest.raises(FileNotFoundError, match=r"missing \['.*manifest.json'"):
        shipped.demo_assets("B")
    shutil.copy(shipped.DEMO_DATA_DIR.parent / shipped.MANIFEST, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"missing \['tokenizers-.*'teacher-B-.*student-init-"):
        shipped.demo_assets("B")


def test_the_shipped_manifest_names_what_the_default_study_makes():
    """The demo finds the study's artifacts through data/study/manifest.json, without study
    code: the names there must be those the default study config hashes to (a changed
    config must be re-exported, not silently paired with stale weights)."""
    import json

    from tide_plugin.shipped import MANIFEST, SHIPPED_DIR
    from tide_plugin.study.config import StudyConfig
    from tide_plugin.study.run import init_name, teacher_name, tokenizers_key

    cfg = StudyConfig()
    key = tokenizers_key(cfg)
    assert json.loads((SHIPPED_DIR / MANIFEST).read_text()) == {
        "tokenizers": f"tokenizers-{key}", "teacher_A": teacher_name("A", cfg, key),
        "teacher_B": teacher_name("B", cfg, key), "student_init": init_name(cfg, key)}


def test_export_writes_the_manifest(tmp_path):
    import json

    from tide_plugin.study.run import export_artifacts

    export_artifacts(["tokenizers-x", "teacher-A-y", "teacher-B-z", "student-init-w"], tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text()) == {
        "tokenizers": "tokenizers-x", "teacher_A": "teacher-A-y", "teacher_B": "teacher-B-z", "student_init": "student-init-w"}


# -- report ---------------------------------------------------------------------------------------
def test_differences_to_bd3lm_are_paired_by_seed():
    def run(bpb):
        return {"bpb": bpb, "eval_se": 0.0, "steps": 5, "wall_seconds": 1.0, "log": [], "curve": []}

    runs = {"BD3LM": {0: run(3.0), 1: run(4.0), 2: run(5.0)}, "B/KL": {0: run(2.9), 1: run(3.8), 2: run(4.9)}}
    arms = summarise(runs, [0, 1, 2])["arms"]
    assert arms["B/KL"]["diff_vs_bd3lm_seeds"] == pytest.approx([-0.1, -0.2, -0.1])
    m, se = mean_se([-0.1, -0.2, -0.1])
    assert arms["B/KL"]["diff_vs_bd3lm_mean"] == pytest.approx(m) and arms["B/KL"]["diff_vs_bd3lm_se"] == pytest.approx(se)
    assert arms["B/KL"]["bpb_se"] == pytest.approx(mean_se([2.9, 3.8, 4.9])[1])
    assert arms["B/KL"]["bpb_se"] > 10 * arms["B/KL"]["diff_vs_bd3lm_se"]  # the pairing removes the seed spread


def test_table_shows_no_difference_for_the_baseline_and_small_errors_in_four_decimals():
    def run(bpb):
        return {"bpb": bpb, "eval_se": 0.0, "steps": 5, "wall_seconds": 1.0, "log": [], "curve": []}

    runs = {"BD3LM": {0: run(3.0), 1: run(4.0)}, "A/CALM": {0: run(3.0003), 1: run(4.0005)}}
    assert delta_row(summarise(runs, [0, 1])["arms"]).split(" | ")[1:] == ["—", "+0.0004 ± 0.0001 * |"]


def test_tide_study_rejects_unknown_arms_with_a_suggestion(tmp_path, capsys):
    from tide_plugin.cli import main

    rc = main(["study", "--arms", "BD3LM,B/KLL", "--output", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown arms 'B/KLL' (did you mean 'B/KL'?)" in err
    assert not (tmp_path / "s").exists()


ISSUE_ARMS = ("BD3LM,A/TIDE-Cross,A/TIDE-Cross (reference noise),A/TIDE-Cross (Bernoulli KL),A/P-KL,"
              "A/P-KL + TIDE-Cross,BD3LM (equal compute)")


def test_arm_names_with_spaces_parentheses_and_plus_parse_from_one_string():
    from tide_plugin.study.arms import ARMS
    from tide_plugin.study.cli import parse_arms

    arms = parse_arms(ISSUE_ARMS)
    assert arms == ("BD3LM", "A/TIDE-Cross", "A/TIDE-Cross (reference noise)", "A/TIDE-Cross (Bernoulli KL)", "A/P-KL",
                    "A/P-KL + TIDE-Cross", "BD3LM (equal compute)")
    assert all(a in ARMS for a in arms)
    assert ARMS["A/P-KL + TIDE-Cross"].objective == "projected_kl+reverse_calm"
    assert ARMS["A/TIDE-Cross (reference noise)"].chunk_noise == "reference"
    assert ARMS["A/TIDE-Cross (Bernoulli KL)"].options == {"reverse_calm": {"bernoulli_kl": True}}


def test_an_arm_whose_objective_is_not_registered_fails_in_one_line_naming_it(tmp_path, capsys, monkeypatch):
    from tide_plugin.cli import main
    from tide_plugin.study import arms

    monkeypatch.setitem(arms.ARMS, "A/Future", arms.ArmSpec("A", "reverse_calm+no_such_objective"))
    monkeypatch.setitem(arms.ARMS, "A/Future option", arms.ArmSpec("A", "calm", options={"calm": {"no_such": 1}}))
    for arm, needle in (("A/Future", "arm 'A/Future' needs the objective 'no_such_objective', which is not registered"),
                        ("A/Future option", "arm 'A/Future option' passes calm options {'no_such': 1}, which this")):
        rc = main(["study", "--arms", f"BD3LM,{arm}", "--output", str(tmp_path / "s")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "s").exists()
