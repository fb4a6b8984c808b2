"""Our argument classes beside dllm's, in one ``transformers.HfArgumentParser``.

A dllm script parses ``(ModelArguments, DataArguments, TrainingArguments)``; a
distillation script parses::

    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, DllmDistillConfig))

:class:`~tide_plugin.integrations.dllm.DllmDistillConfig` is dllm's ``BD3LMConfig``
(a dllm ``TrainingArguments``) plus :class:`~tide_plugin.training.DistillArguments`;
or, beside dllm's plain ``TrainingArguments``, :class:`DistillArguments` alone. No
field of ours repeats one of dllm's ``ModelArguments`` / ``DataArguments`` (the
student's ``dtype`` and truncation ``max_length`` are dllm's; the teacher's are
``teacher_dtype`` and ``teacher_max_length``), and the ``BD3LMConfig`` fields we
share (``block_size``, ``time_epsilon``, ``loss_weight_type``, ``loss_norm_type``,
``right_shift_logits``) are one field with dllm's meaning.

This module imports nothing of dllm: the field names below are dllm's, checked
against the installed package by :func:`dllm_field_names` where dllm imports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

DLLM_MODEL_FIELDS = frozenset({
    "model_name_or_path", "dtype", "load_in_4bit", "attn_implementation", "lora", "target_modules", "r",
    "lora_alpha", "lora_dropout", "bias", "modules_to_save",
})
"""``dllm.utils.ModelArguments``."""
DLLM_DATA_FIELDS = frozenset({"dataset_args", "num_proc", "disable_caching", "max_length", "truncation"})
"""``dllm.utils.DataArguments``."""
DLLM_BD3LM_FIELDS = frozenset({"time_epsilon", "loss_weight_type", "loss_norm_type", "right_shift_logits", "block_size"})
"""What ``dllm.core.trainers.BD3LMConfig`` adds to ``TrainingArguments`` (ours mean the same)."""


def field_names(cls: Any) -> set[str]:
    """The ``__init__`` fields of a dataclass (what ``HfArgumentParser`` turns into flags)."""
    return {f.name for f in dataclasses.fields(cls) if f.init}


def argument_collisions(classes: Iterable[Any]) -> dict[str, list[str]]:
    """Field name -> the classes defining it, for names more than one of ``classes``
    define (each would be a conflicting option string in one ``HfArgumentParser``)."""
    owners: dict[str, list[str]] = {}
    for cls in classes:
        for name in field_names(cls):
            owners.setdefault(name, []).append(cls.__name__)
    return {name: who for name, who in sorted(owners.items()) if len(who) > 1}


def dllm_field_names() -> dict[str, set[str]]:
    """The installed dllm's field names (``model``, ``data``, ``bd3lm``); needs dllm."""
    import transformers
    from dllm.core.trainers import BD3LMConfig
    from dllm.utils import DataArguments, ModelArguments

    return {
        "model": field_names(ModelArguments),
        "data": field_names(DataArguments),
        "bd3lm": field_names(BD3LMConfig) - field_names(transformers.TrainingArguments),
    }
