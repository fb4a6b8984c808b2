"""`tide study` end to end at a smoke size: corpus -> tokenizers -> teachers (cached) ->
student init -> arms through the trainer -> study.json / study.md / study.png."""

from __future__ import annotations

import json

import pytest

from tide_plugin.study.config import StudyConfig
from tide_plugin.study.corpus import CorpusConfig
from tide_plugin.study.models import ModelSpec
from tide_plugin.study.teachers import TrainSchedule

pytestmark = pytest.mark.slow

TINY = ModelSpec("qwen3", hidden=32, layers=1, heads=4, kv_heads=2, intermediate=32)
SMOKE = StudyConfig(
    corpus=CorpusConfig(packages=("json", "http", "urllib"), sources=("code",), heldout_permille=300,
                        max_train_rows=48, max_heldout_rows=6, max_prompt_chars=120, max_response_chars=160),
    student_vocab=300,
    cross_vocab=300,
    student=TINY,
    teacher_a=ModelSpec("qwen3_moe", hidden=32, layers=1, heads=4, kv_heads=2, intermediate=32, experts=2,
                        experts_per_token=1),
    teacher_b=TINY,
    teacher_schedule=TrainSchedule(steps=4, batch_size=4, warmup=1, max_length=96, validate_every=2),
    init_schedule=TrainSchedule(steps=2, batch_size=4, warmup=1, max_length=64),
    steps=3,
    batch_size=4,
    max_length=96,
    teacher_max_length=128,
    seeds=(0, 1),
    arms=("BD3LM", "B/TIDE-Shared", "A/TIDE-Cross", "BD3LM (equal compute)"),
    eval_samples=1,
    curve_rows=2,
    eval_every=3,
)


def test_study_smoke_writes_table_plot_and_json(tmp_path, monkeypatch):
    from tide_plugin.study.models import find_artifact, read_meta
    from tide_plugin.study.run import run_study, teacher_name, tokenizers_key

    monkeypatch.setenv("TIDE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "study"
    result = run_study(SMOKE, out, progress=False)
    data = json.loads((out / "study.json").read_text())
    assert set(data["arms"]) == set(SMOKE.arms)
    for arm in SMOKE.arms:
        entry = data["arms"][arm]
        assert len(entry["bpb_seeds"]) == 2 and entry["bpb_mean"] > 0 and entry["bpb_se"] >= 0
    assert data["arms"]["BD3LM"]["diff_vs_bd3lm_seeds"] == [0.0, 0.0]
    assert data["arms"]["BD3LM (equal compute)"]["steps"] >= SMOKE.steps
    assert set(data["teacher_bpb"]) == {"A", "B"} and data["student_init_bpb"] > 0
    assert data["python"] and data["config"]["seeds"] == [0, 1]
    assert (out / "study.png").stat().st_size > 0
    table = (out / "study.md").read_text()
    assert "| BD3LM |" in table.replace("| | BD3LM |", "| BD3LM |") and "A/TIDE-Cross" in table
    assert result["arms"]["A/TIDE-Cross"]["bpb_seeds"] == data["arms"]["A/TIDE-Cross"]["bpb_seeds"]
    # teachers are cached by the hash of their config: a second run finds, not trains, them
    name = teacher_name("A", SMOKE, tokenizers_key(SMOKE))
    first = read_meta(find_artifact(name))
    with pytest.raises(FileExistsError, match="study.json exists"):
        run_study(SMOKE, out, progress=False)  # nothing is overwritten
    again = run_study(SMOKE.replace(arms=("BD3LM",), seeds=(0,)), tmp_path / "again", progress=False)
    assert read_meta(find_artifact(name)) == first
    assert again["teacher_bpb"] == pytest.approx(data["teacher_bpb"])
