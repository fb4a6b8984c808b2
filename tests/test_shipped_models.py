"""The shipped study models build the same network under transformers 4.57 and 5.x:
their configs carry the keys 4.57 reads beside the 5.x ones, and each model's logits
on fixed inputs match reference logits computed once under transformers 5.x
(tests/data/shipped_logits.json; rewrite with ``python tests/test_shipped_models.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tide_plugin.study.models import SHIPPED_DIR, both_stacks_config, load_model

FIXTURE = Path(__file__).parent / "data" / "shipped_logits.json"
MODELS = sorted(p.parent.name for p in SHIPPED_DIR.glob("*/config.json"))


def _inputs(vocab_size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (2, 24), generator=g)


def _summary(folder: Path) -> dict:
    model = load_model(folder).eval()
    ids = _inputs(int(model.config.vocab_size))
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()  # causal attention: the network itself
    return {
        "corner": logits[0, :4, :4].tolist(),
        "last": logits[1, -1, :8].tolist(),
        "sum": float(logits.double().sum()),
        "abs_sum": float(logits.double().abs().sum()),
    }


def test_every_shipped_model_has_a_reference():
    assert MODELS and sorted(json.loads(FIXTURE.read_text())["models"]) == MODELS


@pytest.mark.parametrize("name", MODELS)
def test_shipped_config_carries_the_keys_both_stacks_read(name):
    data = json.loads((SHIPPED_DIR / name / "config.json").read_text())
    assert both_stacks_config(data) == data
    if "rope_parameters" in data:
        assert data["rope_theta"] == data["rope_parameters"]["rope_theta"]


@pytest.mark.parametrize("name", MODELS)
def test_shipped_model_logits_match_the_5x_reference(name):
    reference = json.loads(FIXTURE.read_text())["models"][name]
    got = _summary(SHIPPED_DIR / name)
    torch.testing.assert_close(torch.tensor(got["corner"]), torch.tensor(reference["corner"]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.tensor(got["last"]), torch.tensor(reference["last"]), rtol=1e-4, atol=1e-4)
    n = 2 * 24 * len(reference["last"])  # a loose scale for the sums of [2, 24, V] logits
    assert got["sum"] == pytest.approx(reference["sum"], rel=1e-4, abs=1e-4 * n)
    assert got["abs_sum"] == pytest.approx(reference["abs_sum"], rel=1e-5)


def test_both_stacks_config_adds_what_4_57_reads():
    data = {"rope_parameters": {"rope_theta": 5e5, "rope_type": "linear", "factor": 2.0}, "num_local_experts": 4}
    both = both_stacks_config(data)
    assert both["rope_theta"] == 5e5 and both["num_experts"] == 4
    assert both["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}
    assert "rope_scaling" not in both_stacks_config({"rope_parameters": {"rope_theta": 1e4, "rope_type": "default"}})


if __name__ == "__main__":  # the reference, under transformers 5.x
    import transformers

    assert int(transformers.__version__.split(".")[0]) >= 5, "write the reference under transformers 5.x"
    FIXTURE.parent.mkdir(exist_ok=True)
    models = {name: _summary(SHIPPED_DIR / name) for name in MODELS}
    FIXTURE.write_text(json.dumps({"transformers": transformers.__version__, "models": models}, indent=1) + "\n")
    print(f"wrote {FIXTURE}")
