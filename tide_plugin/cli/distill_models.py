"""The tokenizers and models of a ``tide distill`` run: the folders given, else tiny
randomly initialised Qwen3 models on the offline tokenizers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .presets import ALT_TEMPLATE

TINY_HIDDEN_SIZE = 32
"""Hidden size of the tiny default student and teacher (``--tiny_hidden_size``)."""
STUDENT_TOKENIZER = "offline:qwen"
TEACHER_TOKENIZER = "offline:mistral"
"""The tokenizers when neither a tokenizer nor a model folder is given."""


def load_tokenizer(spec: str) -> Any:
    """``offline:<name>``, ``offline:qwen-alt-template`` (Qwen's vocabulary under another
    chat template) or a local folder."""
    if spec == "offline:qwen-alt-template":
        import copy

        from ..offline import tokenizer

        tok = copy.deepcopy(tokenizer("qwen"))
        tok.chat_template = ALT_TEMPLATE
        return tok
    from ..alignment.preprocess import load_tokenizer as load

    return load(spec)


class RunTokenizers:
    """The run's tokenizer specs (``--student_tokenizer``, else the student folder's,
    else :data:`STUDENT_TOKENIZER`; the teacher's likewise, and on the ``same`` pipeline
    the student's) and each tokenizer, loaded once."""

    def __init__(self, run: Mapping[str, Any], pipeline: str | None = None, loaded: dict[str, Any] | None = None):
        self.run = run
        self.student_spec = run.get("student_tokenizer") or run.get("model_name_or_path") or STUDENT_TOKENIZER
        teacher = run.get("teacher_tokenizer") or run.get("teacher_model_name_or_path") or TEACHER_TOKENIZER
        self.teacher_spec = self.student_spec if pipeline == "same" else teacher  # same: the teacher reads the student's ids
        self._loaded: dict[str, Any] = {} if loaded is None else loaded

    def for_pipeline(self, pipeline: str | None) -> RunTokenizers:
        """The same run's tokenizers on ``pipeline`` (those already loaded are kept)."""
        return RunTokenizers(self.run, pipeline, self._loaded)

    def load(self, spec: str) -> Any:
        if spec not in self._loaded:
            self._loaded[spec] = load_tokenizer(spec)
        return self._loaded[spec]

    @property
    def student(self) -> Any:
        return self.load(self.student_spec)

    @property
    def teacher(self) -> Any:
        return self.load(self.teacher_spec)


def demo_shared_vocab_size(run: Mapping[str, Any], options: Mapping[str, Any], tokenizers: RunTokenizers) -> int | None:
    """The shared vocabulary of the shipped pipeline-B demos, decided before the config
    is built: the shipped teacher reads the student's whole vocabulary; the offline
    stand-in, Qwen's shared ids. ``None`` elsewhere, or when ``--shared_vocab_size`` is given."""
    if run.get("study_assets") != "B" or options.get("shared_vocab_size") is not None:
        return None
    from ..offline import QWEN_SHARED_VOCAB_SIZE

    return QWEN_SHARED_VOCAB_SIZE if tokenizers.student_spec == STUDENT_TOKENIZER else len(tokenizers.student)


def special_ids(tok: Any) -> dict[str, int]:
    """The tokenizer's special ids for a tiny model's config (so saving does not have
    to reconcile the model's generation config with the tokenizer)."""
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    return {k: v for k, v in ids.items() if v is not None}


def build_student(run: Mapping[str, Any], tok: Any, config: Any) -> torch.nn.Module:
    """The student folder loaded (``--dtype``), else a tiny Qwen3 on ``tok`` (seed ``config.seed``)."""
    impl = run.get("attn_implementation") or "sdpa"
    if run.get("model_name_or_path"):
        from ..checkpoints import load_student, training_dtype

        return load_student(run["model_name_or_path"], attn_implementation=impl, dtype=training_dtype(config.dtype))
    from ..tiny import tiny_qwen3

    return tiny_qwen3(
        len(tok),
        hidden_size=int(run.get("tiny_hidden_size") or TINY_HIDDEN_SIZE),
        attn_implementation=impl,
        seed=config.seed,
        **special_ids(tok),
    )


def saved_dtype(folder: str | None) -> str | None:
    """The dtype a student folder's ``config.json`` records (``None`` when unknown)."""
    try:
        fields = json.loads((Path(str(folder)) / "config.json").read_text()) if folder else {}
    except (OSError, ValueError):
        return None
    value = fields.get("dtype") or fields.get("torch_dtype")
    return value if isinstance(value, str) else None


def build_teacher_model(run: Mapping[str, Any], tok: Any, config: Any, needed: bool) -> torch.nn.Module | str | None:
    """The teacher folder (the adapter loads it), else a tiny Qwen3-MoE (``--teacher_arch
    qwen3`` a dense one) on ``tok`` (seed ``config.seed + 1``); ``None`` when no objective
    of the run reads a teacher."""
    if not needed:  # CE only: no teacher is loaded or built
        return None
    if run.get("teacher_model_name_or_path"):
        return run["teacher_model_name_or_path"]
    from ..tiny import tiny_qwen3, tiny_qwen3_moe

    build = tiny_qwen3_moe if run.get("teacher_arch", "qwen3_moe") == "qwen3_moe" else tiny_qwen3
    return build(len(tok), hidden_size=int(run.get("tiny_hidden_size") or TINY_HIDDEN_SIZE), seed=config.seed + 1,
                 **special_ids(tok))
