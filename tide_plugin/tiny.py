"""Tiny, randomly initialised models for the embedded demo and the tests.

Vocabulary sizes come from the tokenizers, so the embedding is most of the cost;
hidden sizes are kept tiny. Nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

import torch


def tiny_qwen3(
    vocab_size: int,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    attn_implementation: str = "sdpa",
    seed: int | None = 0,
    **extra: Any,
) -> torch.nn.Module:
    """A tiny ``Qwen3ForCausalLM`` (the student architecture, and a dense teacher)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        **extra,
    )
    config._attn_implementation = attn_implementation
    if seed is not None:
        torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.config._attn_implementation = attn_implementation
    return model


def tiny_qwen3_moe(
    vocab_size: int,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    num_experts: int = 4,
    experts_per_token: int = 2,
    attn_implementation: str = "sdpa",
    seed: int | None = 0,
    **extra: Any,
) -> torch.nn.Module:
    """A tiny ``Qwen3MoeForCausalLM``: the MoE teacher architecture (LLaDA2.0-mini's shape
    in miniature; a masked-diffusion teacher is a non-causal LM fed our own 4D mask)."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    config = Qwen3MoeConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        moe_intermediate_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        num_experts=num_experts,
        num_experts_per_tok=experts_per_token,
        decoder_sparse_step=1,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        **extra,
    )
    config._attn_implementation = attn_implementation
    if seed is not None:
        torch.manual_seed(seed)
    model = Qwen3MoeForCausalLM(config)
    model.config._attn_implementation = attn_implementation
    return model


def set_attn_implementation(model: torch.nn.Module, impl: str) -> torch.nn.Module:
    """Switch a built model's attention implementation (same weights)."""
    if hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation(impl)
            return model
        except Exception:  # older transformers: fall back to the config attribute
            pass
    model.config._attn_implementation = impl
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = impl
    return model
