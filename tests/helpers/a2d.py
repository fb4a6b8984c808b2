"""dllm's A2D classes for the tests: where dllm imports, its own (importing dllm
registers them); elsewhere a config class per ``a2d-*`` model type registered with
``AutoConfig`` and a causal-LM subclass registered for ``AutoModel`` and
``AutoModelForMaskedLM``, as dllm's modelling files do on import, unregistered
afterwards (whatever was registered before is put back). ``a2d_unregistered`` hides a
registration for a test of loading without dllm. A2D folders are written the way
dllm's conversion writes them."""

from __future__ import annotations

import contextlib

import torch
import transformers

V = 64
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


def _mappings():
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING, MODEL_MAPPING

    return CONFIG_MAPPING, MODEL_MAPPING, MODEL_FOR_MASKED_LM_MAPPING


def dllm_a2d_classes(model_type: str) -> tuple[type, type] | None:
    """dllm's ``(config class, LM-head class)`` of ``model_type``, or ``None`` without dllm."""
    from tide_plugin.training import dllm_available

    if not dllm_available():
        return None
    import dllm.pipelines.a2d as a2d

    stem = {"a2d-qwen3": "A2DQwen3", "a2d-qwen2": "A2DQwen2", "a2d-llama": "A2DLlama"}[model_type]
    return getattr(a2d, f"{stem}Config"), getattr(a2d, f"{stem}LMHeadModel")


@contextlib.contextmanager
def a2d_registration(model_type: str = "a2d-qwen3"):
    """``(config class, LM-head class)`` of ``model_type``, registered as dllm registers
    them for the block: dllm's own where dllm imports, else stand-ins; what was registered
    before is restored after it."""
    config_cls, model_cls = dllm_a2d_classes(model_type) or _a2d_classes(model_type)
    with a2d_unregistered(model_type):
        transformers.AutoConfig.register(model_type, config_cls)
        transformers.AutoModel.register(config_cls, model_cls)
        transformers.AutoModelForMaskedLM.register(config_cls, model_cls)
        yield config_cls, model_cls


@contextlib.contextmanager
def a2d_unregistered(model_type: str = "a2d-qwen3"):
    """No ``model_type`` registration inside the block; what was registered before
    (dllm's classes, for one) is restored after it."""
    configs, models, masked = _mappings()
    saved_config = configs._extra_content.pop(model_type, None)
    saved = [None, None]
    if saved_config is not None:
        saved = [m._extra_content.pop(saved_config, None) for m in (models, masked)]
    try:
        yield
    finally:
        configs._extra_content.pop(model_type, None)
        if saved_config is not None:
            configs._extra_content[model_type] = saved_config
        for m, before in zip((models, masked), saved):
            for key in [k for k in m._extra_content if getattr(k, "model_type", None) == model_type]:
                m._extra_content.pop(key)
            if before is not None:
                m._extra_content[saved_config] = before


def tiny_plain(model_type: str = "a2d-qwen3", seed: int = 0, vocab_size: int = V, **extra_config) -> torch.nn.Module:
    config_base, model_base, _ = BASES[model_type]
    extra = {"head_dim": 8} if "qwen3" in model_type else {}
    config = getattr(transformers, config_base)(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, **extra, **extra_config,
    )
    torch.manual_seed(seed)
    return getattr(transformers, model_base)(config).eval()


def write_a2d_folder(path, model_type: str = "a2d-qwen3", seed: int = 0, **plain_kwargs) -> torch.nn.Module:
    """An A2D folder as dllm's conversion writes it: the A2D config built from the
    causal LM's fields, the A2D model given the causal LM's weights, ``save_pretrained``."""
    plain = tiny_plain(model_type, seed, **plain_kwargs)
    with a2d_registration(model_type) as (config_cls, model_cls):
        fields = plain.config.to_dict()
        for key in ("model_type", "architectures", "auto_map"):
            fields.pop(key, None)
        model = model_cls(config_cls(**fields))
        missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
        assert not missing and not unexpected
        model.save_pretrained(path)
    return plain


