"""The README's plugin section, run as written: every Python block of it executes,
the example objective runs on the fused output layer (``supports_projected_logits``)
with the value and gradient of full logits, and the example decoder registers,
keeps the decoder contract and generates with a tiny student through the sampler."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch

import tide_plugin
from helpers.distill import three_chunk_batch
from helpers.markdown import section
from tide_plugin.registry import Registry, get_registry

README = Path(__file__).resolve().parents[1] / "README.md"


def plugin_section() -> str:
    return section(README, "Plugins")  # up to the next level-2 heading or the end of the page


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", plugin_section(), re.S)


def run_block(source: str, name: str, monkeypatch) -> types.ModuleType:
    module = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up
    exec(compile(source, f"README.md:{name}", "exec"), module.__dict__)  # noqa: S102 - our own documentation
    return module


def block_defining(hook: str) -> str:
    [source] = [b for b in python_blocks() if f"def {hook}(" in b]
    return source


def test_every_python_block_of_the_plugin_section_runs(monkeypatch):
    blocks = python_blocks()
    assert len(blocks) >= 3  # the API tour, the chunk objective, the decoder
    for i, source in enumerate(blocks):
        run_block(source, f"readme_plugin_block_{i}", monkeypatch)


def test_the_plugin_section_documents_the_fused_flag_and_the_decoder_contract():
    section = plugin_section()
    for needle in ("supports_projected_logits", "ProjectedLogits", "active_chunk_log_probs", "token_rows",
                   "one warning line", "`calls(block_length, budget)`", "`None` when it depends on the predictions",
                   "`select(confidence, masked, *, call,", "at least one position"):
        assert needle in section, needle


@pytest.fixture()
def reload_registry():
    yield
    get_registry(reload=True)


def test_the_example_objective_runs_on_projected_logits_as_on_full_logits(monkeypatch):
    module = run_block(block_defining("tide_plugin_objectives"), "readme_chunk_objective", monkeypatch)
    reg = Registry()
    reg.register(module, distribution="readme-example")
    obj = reg.build("objective", "chunk_mse", temperature=1.5)
    assert obj.supports_projected_logits
    from tide_plugin.heads import fused_path_problem
    from tide_plugin.logits import ProjectedLogits

    problem = fused_path_problem(torch.nn.Linear(2, 2), object(), obj) or ""
    assert "supports_projected_logits" not in problem  # the objective does not rule the fused layer out

    g = torch.Generator().manual_seed(0)
    b, length, hidden, v = 2, 6, 5, 11
    ids = torch.randint(0, v, (b, length), generator=g)
    batch = three_chunk_batch(ids)
    h_s = torch.randn(b, length, hidden, generator=g, requires_grad=True)
    w_s = torch.randn(v, hidden, generator=g, requires_grad=True)
    h_t, w_t = torch.randn(b, length, hidden, generator=g), torch.randn(v, hidden, generator=g)

    def loss_and_grads(student, teacher):
        loss = obj(tide_plugin.DistillInputs(batch=batch, student_logits=student, teacher_logits=teacher))["chunk_mse"]
        return (loss, *torch.autograd.grad(loss, (h_s, w_s)))

    full = loss_and_grads(h_s @ w_s.T, h_t @ w_t.T)
    fused = loss_and_grads(ProjectedLogits(h_s, w_s), ProjectedLogits(h_t, w_t))
    for a, c in zip(full, fused):
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-6)


def test_the_example_decoder_keeps_the_contract_and_generates(monkeypatch, reload_registry):
    from tide_plugin.eval.decoders import get_decoder
    from tide_plugin.eval.sampler import SamplingStats, generate
    from tide_plugin.tiny import tiny_qwen3

    module = run_block(block_defining("tide_plugin_decoders"), "readme_decoder", monkeypatch)
    get_registry().register(module, distribution="readme-example")  # what its entry point does
    dec = get_decoder("near_best", ratio=0.5)
    assert dec.name == "near_best" and dec.describe() == {"ratio": 0.5} and dec.calls(32, 32) is None
    with pytest.raises(ValueError, match="unknown option 'ratoi' for decoder 'near_best'; did you mean 'ratio'"):
        get_decoder("near_best", ratoi=0.5)
    with pytest.raises(ValueError, match=r"ratio must be a number in \(0, 1\], got 1.5"):
        get_decoder("near_best", ratio=1.5)

    # select: a subset of masked, at least one per row that has a masked position, the best one included
    confidence = torch.tensor([[0.9, 0.5, -torch.inf, 0.46], [0.2, 0.09, 0.3, 0.05], [-torch.inf] * 4])
    masked = torch.tensor([[True, True, False, True], [True, True, False, True], [False] * 4])
    chosen = dec.select(confidence, masked, call=0, budget=4)
    assert chosen.tolist() == [[True, True, False, True], [True, False, False, False], [False] * 4]

    vocab, mask_id = 64, 63
    model = tiny_qwen3(vocab, seed=0).eval()
    prompts = [[1, 2, 3, 4, 5], [6, 7, 8]]
    common = dict(mask_id=mask_id, block_size=8, max_new_tokens=16, stop_token_ids=())
    wide, narrow = SamplingStats(), SamplingStats()
    out = generate(model, prompts, decoder="near_best", decoder_options={"ratio": 0.5}, stats=wide, **common)
    assert [len(o) for o in out] == [16, 16] and all(mask_id not in o for o in out)
    assert wide.decoder == {"decoder": "near_best", "ratio": 0.5} and wide.calls < 16  # several per call
    # ratio 1 commits only the most confident position: one_per_step's choice, call for call
    assert generate(model, prompts, decoder="near_best", decoder_options={"ratio": 1.0}, stats=narrow,
                    **common) == generate(model, prompts, decoder="one_per_step", **common)
    assert narrow.calls == 16
