"""`tide study` end to end at a smoke size: corpus -> tokenizers -> teachers (cached) ->
student init -> arms through the trainer -> study.json / study.md / study.png."""

from __future__ import annotations

import json

import pytest

from tide_plugin.study.config import preset

pytestmark = pytest.mark.slow

SMOKE = preset("smoke")


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
    # teachers are cached by the hash of their config: asked again, the artifact is found, not
    # retrained (with no training rows, training would fail)
    from tide_plugin.study.run import teacher_for
    from tide_plugin.study.tokenizers import load_tokenizers

    key = tokenizers_key(SMOKE)
    name = teacher_name("A", SMOKE, key)
    first = read_meta(find_artifact(name))
    toks = load_tokenizers(find_artifact(f"tokenizers-{key}"))
    _, again, meta = teacher_for("A", SMOKE, toks, key, [], device="cpu", budget_s=None, progress=False)
    assert again == name and meta == first and meta["steps_done"] == SMOKE.teacher_schedule.steps
    with pytest.raises(FileExistsError, match="study.json exists"):
        run_study(SMOKE, out, progress=False)  # nothing is overwritten
