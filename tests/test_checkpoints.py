"""Student checkpoints in both layouts (SPEC 2.2): plain transformers folders and dllm's
A2D folders load, keep their layout when saved, and give the same logits.

dllm itself does not install here, so ``a2d_registration`` reproduces what importing
dllm's A2D models does (a config class per ``a2d-*`` model type registered with
``AutoConfig``, a causal-LM subclass registered for ``AutoModel`` and
``AutoModelForMaskedLM``) and undoes it afterwards.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
import transformers

from tide_plugin.bd3lm import block_diffusion_logits
from tide_plugin.checkpoints import LAYOUT_ATTR, checkpoint_layout, load_student, save_student

V, BLOCK = 64, 4
BASES = {
    # A2D type -> (transformers config class, causal LM class, dllm's LM-head class name)
    "a2d-qwen3": ("Qwen3Config", "Qwen3ForCausalLM", "A2DQwen3LMHeadModel"),
    "a2d-qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "A2DQwen2LMHeadModel"),
    "a2d-llama": ("LlamaConfig", "LlamaForCausalLM", "A2DLlamaLMHeadModel"),
}


def _a2d_classes(model_type: str) -> tuple[type, type]:
    config_base, model_base, head_name = BASES[model_type]
    config_cls = type(
        config_base.replace("Config", "").replace("Qwen", "A2DQwen").replace("Llama", "A2DLlama") + "Config",
        (getattr(transformers, config_base),),
        {"model_type": model_type},
    )
    model_cls = type(
        head_name,
        (getattr(transformers, model_base),),
        {"config_class": config_cls, "__annotations__": {"config": config_cls}},
    )
    return config_cls, model_cls


@contextlib.contextmanager
def a2d_registration(model_type: str = "a2d-qwen3"):
    """Register ``model_type`` exactly as dllm's modelling files do, then unregister."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING, MODEL_MAPPING

    config_cls, model_cls = _a2d_classes(model_type)
    transformers.AutoConfig.register(model_type, config_cls)
    transformers.AutoModel.register(config_cls, model_cls)
    transformers.AutoModelForMaskedLM.register(config_cls, model_cls)
    try:
        yield config_cls, model_cls
    finally:
        CONFIG_MAPPING._extra_content.pop(model_type, None)
        MODEL_MAPPING._extra_content.pop(config_cls, None)
        MODEL_FOR_MASKED_LM_MAPPING._extra_content.pop(config_cls, None)


def _tiny_plain(model_type: str = "a2d-qwen3", seed: int = 0) -> torch.nn.Module:
    config_base, model_base, _ = BASES[model_type]
    extra = {"head_dim": 8} if "qwen3" in model_type else {}
    config = getattr(transformers, config_base)(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, **extra,
    )
    torch.manual_seed(seed)
    return getattr(transformers, model_base)(config).eval()


def _write_a2d_folder(path, model_type: str = "a2d-qwen3", seed: int = 0) -> torch.nn.Module:
    """An A2D folder as dllm's conversion writes it: the A2D config built from the
    causal LM's fields, the A2D model given the causal LM's weights, ``save_pretrained``."""
    plain = _tiny_plain(model_type, seed)
    with a2d_registration(model_type) as (config_cls, model_cls):
        fields = plain.config.to_dict()
        for key in ("model_type", "architectures", "auto_map"):
            fields.pop(key, None)
        model = model_cls(config_cls(**fields))
        missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
        assert not missing and not unexpected
        model.save_pretrained(path)
    return plain


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
    from _distill_helpers import EOS, MASK, synthetic_rows

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
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_student(tmp_path)
