"""Model shapes of the study (student, MoE masked-diffusion teacher, dense block teacher),
the cache of trained artifacts (keyed by a hash of their config) and the shipped ones.

An artifact is a folder ``<name>-<hash>`` holding what ``save_pretrained`` writes plus
``study_meta.json``. It is looked up first among the weights shipped with the package
(``tide_plugin/data/study/``), then in the cache (``$TIDE_CACHE_DIR/study`` or
``~/.cache/tide-plugin/study``); the hash covers everything that made it (corpus and
tokenizer settings, shape, training schedule), not the machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..shipped import META_FILE, SHIPPED_DIR

ARCHS = ("qwen3", "qwen3_moe")


@dataclass(frozen=True)
class ModelSpec:
    """A Qwen3 (dense) or Qwen3-MoE shape. ``intermediate`` is the dense MLP width, or each
    expert's width for the MoE."""

    arch: str = "qwen3"
    hidden: int = 96
    layers: int = 3
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 256
    experts: int = 0
    experts_per_token: int = 2

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch {self.arch!r} is not one of {ARCHS}")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError(f"hidden {self.hidden}, heads {self.heads}, kv_heads {self.kv_heads} do not divide")
        if self.arch == "qwen3_moe" and not 0 < self.experts_per_token <= self.experts:
            raise ValueError(f"experts_per_token {self.experts_per_token} must lie in [1, experts={self.experts}]")

    def build(self, tokenizer: Any, *, seed: int = 0) -> torch.nn.Module:
        """A freshly initialised model for ``tokenizer``'s vocabulary (sdpa attention)."""
        import transformers

        common = dict(
            vocab_size=len(tokenizer),
            hidden_size=self.hidden,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            head_dim=self.hidden // self.heads,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            mask_token_id=tokenizer.mask_token_id,
        )
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(tokenizer, key, None) is not None:
                common[key] = getattr(tokenizer, key)
        if self.arch == "qwen3":
            config = transformers.Qwen3Config(intermediate_size=self.intermediate, **common)
            cls = transformers.Qwen3ForCausalLM
        else:
            config = transformers.Qwen3MoeConfig(
                intermediate_size=self.intermediate,
                moe_intermediate_size=self.intermediate,
                num_experts=self.experts,
                num_experts_per_tok=self.experts_per_token,
                decoder_sparse_step=1,
                **common,
            )
            cls = transformers.Qwen3MoeForCausalLM
        config._attn_implementation = "sdpa"
        torch.manual_seed(seed)
        model = cls(config)
        model.config._attn_implementation = "sdpa"
        return model


def non_embedding_params(model: torch.nn.Module) -> int:
    emb = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not emb)


def config_hash(*parts: Any) -> str:
    """A short stable hash of dataclasses / JSON-able values."""

    def plain(x: Any) -> Any:
        return dataclasses.asdict(x) if dataclasses.is_dataclass(x) else x

    blob = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def cache_root() -> Path:
    base = os.environ.get("TIDE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "tide-plugin")
    return Path(base) / "study"


def find_artifact(name: str) -> Path | None:
    """The shipped or cached folder ``name`` (``<kind>-<hash>``), if complete."""
    for root in (SHIPPED_DIR, cache_root()):
        folder = root / name
        if (folder / META_FILE).is_file():
            return folder
    return None


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    """Written last: an artifact without it is incomplete and is rebuilt."""
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")


def read_meta(folder: Path) -> dict[str, Any]:
    return json.loads((folder / META_FILE).read_text())


def save_model(model: torch.nn.Module, folder: Path) -> None:
    """Weights in bfloat16 (half the bytes to ship); loaded back as float32."""
    folder.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(str(folder))
    model.to(torch.float32)
    config = folder / "config.json"
    data = json.loads(config.read_text())
    both = both_stacks_config(data)
    if both != data:
        config.write_text(json.dumps(both, indent=2) + "\n")


def both_stacks_config(data: dict[str, Any]) -> dict[str, Any]:
    """A ``config.json`` written by transformers 5 with the keys transformers 4.57 reads
    beside the 5.x ones (same values), so both stacks build the same model: ``num_experts``
    (5.x: ``num_local_experts``; else 4.57's default, 128), ``rope_theta`` and, for a
    non-default rope type, ``rope_scaling`` (5.x: both inside ``rope_parameters``; else
    4.57's default theta)."""
    out = dict(data)
    if "num_local_experts" in out and "num_experts" not in out:
        out["num_experts"] = out["num_local_experts"]
    rope = out.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        out.setdefault("rope_theta", rope["rope_theta"])
        if rope.get("rope_type", "default") != "default":
            out.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
    return out


def load_model(folder: Path) -> torch.nn.Module:
    from ..checkpoints import load_student

    model = load_student(folder, attn_implementation="sdpa", dtype="float32")
    model.config._attn_implementation = "sdpa"
    return model
