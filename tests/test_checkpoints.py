"""Student checkpoints in both layouts (docs/method.md#teacher-adapters): plain transformers folders and dllm's
A2D folders load, keep their layout when saved, and give the same logits.

``a2d_registration`` (tests/helpers/a2d.py) gives dllm's own A2D classes where dllm
imports, and stand-ins registered the same way (undone afterwards) where it does not.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
import transformers
from helpers.a2d import BASES, V, a2d_registration, a2d_unregistered
from helpers.a2d import tiny_plain as _tiny_plain
from helpers.a2d import write_a2d_folder as _write_a2d_folder

from tide_plugin.bd3lm import block_diffusion_logits
from tide_plugin.checkpoints import LAYOUT_ATTR, checkpoint_layout, load_student, save_student

BLOCK = 4


def _logits(model: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x0 = torch.randint(0, V - 1, (2, 8), generator=g)
    xt = torch.where(torch.rand(2, 8, generator=g) < 0.5, torch.full_like(x0, V - 1), x0)
    attention = torch.ones_like(x0)
    attention[1, 6:] = 0
    with torch.no_grad():
        return block_diffusion_logits(model.eval(), xt, x0, block_size=BLOCK, attention_mask=attention)


@pytest.mark.parametrize("model_type", sorted(BASES))
def test_a2d_folder_loads_without_dllm_as_the_equivalent_transformers_class(model_type, tmp_path):
    plain = _write_a2d_folder(tmp_path / "a2d", model_type)
    config = json.loads((tmp_path / "a2d" / "config.json").read_text())
    assert config["model_type"] == model_type and config["architectures"] == [BASES[model_type][2]]
    with a2d_unregistered(model_type):  # as without dllm, even where dllm registered it
        student = load_student(tmp_path / "a2d", attn_implementation="sdpa")
    assert type(student).__name__ == BASES[model_type][1]
    assert getattr(student, LAYOUT_ATTR) == model_type == checkpoint_layout(tmp_path / "a2d")
    torch.testing.assert_close(_logits(student), _logits(plain), rtol=0, atol=0)


def test_a2d_folder_loads_through_the_registered_classes(tmp_path):
    plain = _write_a2d_folder(tmp_path / "a2d")
    with a2d_registration() as (_, model_cls):
        student = load_student(tmp_path / "a2d")
        assert type(student) is model_cls and student.get_output_embeddings() is not None
        torch.testing.assert_close(_logits(student), _logits(plain), rtol=0, atol=0)


@pytest.mark.parametrize("registered_when_loading", [False, True])
def test_a2d_student_saved_as_a2d_loads_the_way_dllm_loads_it(registered_when_loading, tmp_path, qwen):
    plain = _write_a2d_folder(tmp_path / "a2d")
    ctx = a2d_registration() if registered_when_loading else contextlib.nullcontext()
    with ctx:
        student = load_student(tmp_path / "a2d")
        save_student(student, tmp_path / "out", tokenizer=qwen)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "a2d-qwen3" and config["architectures"] == ["A2DQwen3LMHeadModel"]
    assert (tmp_path / "out" / "tokenizer_config.json").exists()
    with a2d_registration() as (_, model_cls):
        # dllm's get_model: AutoModelForMaskedLM, falling back to AutoModel
        loaded = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "out")
        assert type(loaded) is model_cls and loaded.get_output_embeddings() is not None
        torch.testing.assert_close(_logits(loaded), _logits(plain), rtol=0, atol=0)
        assert type(transformers.AutoModel.from_pretrained(tmp_path / "out")) is model_cls


def test_plain_student_stays_plain(tmp_path):
    plain = _tiny_plain()
    save_student(plain, tmp_path / "plain")
    student = load_student(tmp_path / "plain")
    assert type(student).__name__ == "Qwen3ForCausalLM" and getattr(student, LAYOUT_ATTR) == "plain"
    save_student(student, tmp_path / "again")
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["architectures"] == ["Qwen3ForCausalLM"]
    torch.testing.assert_close(_logits(load_student(tmp_path / "again")), _logits(plain), rtol=0, atol=0)


def test_trainer_saves_an_a2d_student_as_a2d(tmp_path):
    from helpers.distill import EOS, MASK, synthetic_rows

    from tide_plugin.tiny import tiny_qwen3_moe
    from tide_plugin.training import DistillConfig, build_trainer

    _write_a2d_folder(tmp_path / "a2d")
    cfg = DistillConfig(output_dir=str(tmp_path / "run"), objective="kl", pipeline="same", shared_vocab_size=V,
                        block_size=BLOCK, max_steps=1, save_strategy="no", use_cpu=True, report_to="none",
                        disable_tqdm=True, dataloader_pin_memory=False)
    trainer = build_trainer(cfg, student=load_student(tmp_path / "a2d"), teacher_model=tiny_qwen3_moe(V, seed=1),
                            train_dataset=synthetic_rows(8), student_mask_id=MASK, student_eos_id=EOS)
    trainer.save_model(str(tmp_path / "saved"))
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["model_type"] == "a2d-qwen3" and config["architectures"] == ["A2DQwen3LMHeadModel"]
    assert checkpoint_layout(tmp_path / "saved") == "a2d-qwen3"


def test_a_folder_without_config_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not a model folder: .* \(no config.json"):
        load_student(tmp_path)


def test_the_a2d_helpers_leave_the_registrations_as_they_found_them(tmp_path):
    """No leakage: dllm's own registrations (where dllm is installed) survive the
    helpers, and stand-ins (where it is not) do not outlive their block."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING, MODEL_MAPPING

    def snapshot():
        return [dict(m._extra_content) for m in (CONFIG_MAPPING, MODEL_MAPPING, MODEL_FOR_MASKED_LM_MAPPING)]

    before = snapshot()
    for model_type in sorted(BASES):
        _write_a2d_folder(tmp_path / model_type, model_type)
        with a2d_registration(model_type), a2d_unregistered(model_type):
            assert model_type not in CONFIG_MAPPING._extra_content
        with a2d_unregistered(model_type), a2d_registration(model_type):
            assert model_type in CONFIG_MAPPING._extra_content
    assert snapshot() == before
