"""lm-evaluation-harness model ``tide_bd3lm``: a BD3LM student sampled with
:func:`tide_plugin.eval.sampler.generate`.

lm-eval finds no plugin by itself: importing this module registers the model
(``tide eval`` does it for you)::

    import tide_plugin.eval.lm_eval_model  # registers "tide_bd3lm"
    lm_eval.simple_evaluate(model="tide_bd3lm", model_args={"pretrained": "runs/demo"}, tasks=[...])

Only ``generate_until`` is supported: a diffusion student has no left-to-right
likelihood, so multiple-choice and perplexity tasks raise an error that names
the generative variants to use instead.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

import lm_eval.models  # noqa: F401  - fill lm-eval's registry before adding ours
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from tide_plugin import jsonio
from tide_plugin.checkpoints import TIDE_CONFIG_NAME  # written by the trainer next to the student

from .decoders import DEFAULT_DECODER, get_decoder, parse_decoder_args
from .runtime import THINK_BLOCK, check_checkpoint_dir, strip_think
from .runtime import all_gather as _all_gather
from .runtime import barrier as _barrier
from .runtime import default_device as _default_device
from .runtime import distributed_rank as _distributed_rank
from .runtime import gather_object as _gather_object
from .sampler import REMASKING, SamplingStats, generate
from .taskdefs import GENERATIVE_VARIANTS

log = logging.getLogger(__name__)

MODEL_NAME = "tide_bd3lm"
DEFAULT_BLOCK_SIZE = 32
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _config_value(config: Any, names: tuple[str, ...]) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def read_tide_config(path: Path) -> dict[str, Any]:
    """``tide_config.json``, written next to every student that ``tide distill``
    saves (mask token id, block size); empty when absent."""
    file = Path(path) / TIDE_CONFIG_NAME
    if not file.is_file():
        return {}
    data = jsonio.read(file)
    if not isinstance(data, dict):
        raise ValueError(f"{file} must hold a JSON object, got {type(data).__name__}")
    return {k: v for k, v in data.items() if v is not None}


def checkpoint_mask_id(tokenizer: Any, config: Any) -> int:
    """A saved student's mask token id: its tokenizer's ``mask_token_id``, else its config's."""
    mask_id = getattr(tokenizer, "mask_token_id", None)
    if mask_id is None:
        mask_id = _config_value(config, ("mask_token_id", "mask_id"))
    if mask_id is None:
        raise ValueError(
            "no mask token: the checkpoint's tokenizer has no mask_token and its config no mask_token_id; "
            "pass mask_id=<int> in model_args"
        )
    return int(mask_id)


def resolve_block_size(config: Any) -> int:
    """Block size stored by the trainer in the config, else 32 (docs/method.md#recipes)."""
    value = _config_value(config, ("block_size", "bd3lm_block_size", "tide_block_size"))
    return int(value) if value is not None else DEFAULT_BLOCK_SIZE


@register_model(MODEL_NAME)
class TideBD3LM(LM):
    """A BD3LM student from a local ``save_pretrained`` directory (model + tokenizer).

    :param pretrained: the checkpoint directory (``tide distill`` writes ``runs/demo``).
    :param block_size: default: ``tide_config.json``'s, else the config's, else 32.
    :param mask_id: default: ``tide_config.json``'s, else the tokenizer's, else the config's.
    :param steps: total denoising steps per request; default: the request's
        ``max_gen_toks`` (one token per step, the paper's protocol).
    :param steps_per_block: alternative to ``steps``, the same for every block.
    :param remasking: ``low_confidence`` (default) or ``random``.
    :param temperature: used when the task does not sample (``do_sample: false``
        keeps greedy decoding unless this is set above 0).
    :param max_gen_toks: used when a task gives none (default 256).
    :param dtype: ``float32``, ``bfloat16``, ``float16`` or ``auto`` (checkpoint's).
    :param use_cache: cache clean context (same tokens, faster).
    :param think_injection: put an empty think block (``<think>\n\n</think>\n\n``) right
        after the chat template's generation prompt (the paper's protocol; ``tide eval``
        turns it on with the chat template); think blocks are always stripped from answers.
    :param decoder: registered decoding strategy (``one_per_step``, the paper's,
        default; ``threshold``; ``fixed_k``; a plugin's).
    :param threshold: ``--decoder threshold``'s confidence tau; ``k``: ``fixed_k``'s
        tokens per call; ``decoder_args``: other options (mapping or ``"a=1,b=2"``).

    :ivar sampler_stats: a :class:`~tide_plugin.eval.sampler.SamplingStats` summed over
        every request this model generated (``tide eval`` reports it as ``"sampler"``).
    """

    def __init__(
        self,
        pretrained: str,
        *,
        block_size: int | None = None,
        steps: int | None = None,
        steps_per_block: int | None = None,
        remasking: str = "low_confidence",
        temperature: float = 0.0,
        max_gen_toks: int = 256,
        batch_size: int | str = 1,
        device: str | None = None,
        dtype: str = "auto",
        use_cache: bool | str = True,
        mask_id: int | None = None,
        seed: int | None = 0,
        attn_implementation: str = "sdpa",
        think_injection: bool | str = False,
        decoder: str = DEFAULT_DECODER,
        threshold: float | None = None,
        k: int | None = None,
        decoder_args: Any = None,
        **unused: Any,
    ) -> None:
        super().__init__()
        from transformers import AutoTokenizer

        from tide_plugin.checkpoints import load_student

        path = check_checkpoint_dir(pretrained)
        for key in unused:
            if key not in ("max_batch_size", "trust_remote_code"):
                log.warning("tide_bd3lm ignores model argument %s=%r", key, unused[key])
        if remasking not in REMASKING:
            raise ValueError(f"remasking {remasking!r} is not one of {REMASKING}")
        options = parse_decoder_args(decoder_args)
        if threshold is not None:
            options["threshold"] = float(threshold)
        if k is not None:
            options["k"] = int(k)
        self.decoder = get_decoder(str(decoder), **options)  # bad names and options fail before loading
        self.sampler_stats = SamplingStats()
        if dtype != "auto" and dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {('auto', *_DTYPES)}")
        self._rank, self._world_size = _distributed_rank()
        if device is None:
            device = _default_device(self._rank, self._world_size)
        self._device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = load_student(path, attn_implementation=attn_implementation, dtype=dtype)
        self.model.to(self._device).eval()
        self.path = path
        saved = read_tide_config(path)
        if mask_id is None:
            mask_id = saved.get("mask_token_id")
        if block_size is None:
            block_size = saved.get("block_size")
        self.mask_id = int(mask_id) if mask_id is not None else checkpoint_mask_id(self.tokenizer, self.model.config)
        self.block_size = int(block_size) if block_size is not None else resolve_block_size(self.model.config)
        self.steps = int(steps) if steps is not None else None
        self.steps_per_block = int(steps_per_block) if steps_per_block is not None else None
        self.remasking = remasking
        self.temperature = float(temperature)
        self.max_gen_toks = int(max_gen_toks)
        self.batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self.use_cache = str(use_cache).lower() not in ("false", "0", "no")
        self.seed = None if seed is None else int(seed)
        self.max_length = int(getattr(self.model.config, "max_position_embeddings", 4096) or 4096)
        self.truncated_contexts = 0
        self.ignored_gen_kwargs: dict[str, int] = defaultdict(int)
        self.think_injection = str(think_injection).lower() not in ("false", "0", "no")

    # ------------------------------------------------------------ processes

    @property
    def device(self) -> torch.device:
        return self._device

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return _all_gather(tensor) if self._world_size > 1 else tensor

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        return _gather_object(obj, dst) if self._world_size > 1 else [obj]

    def barrier(self) -> None:
        if self._world_size > 1:
            _barrier()

    # ------------------------------------------------------------ lm-eval API

    @property
    def tokenizer_name(self) -> str:
        return str(self.path).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The chat rendered up to the answer. A task's answer prefix (``gen_prefix``)
        arrives as a final assistant message to continue; it is rendered as the text
        after the generation prompt, so the think block goes between the two."""
        history, prefix = list(chat_history), ""
        if not add_generation_prompt and history and history[-1].get("role") == "assistant":
            prefix = history.pop()["content"]
        text = self.tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        if self.think_injection and not text.endswith(THINK_BLOCK):
            text += THINK_BLOCK
        return text + prefix

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        raise NotImplementedError(self._no_likelihood("loglikelihood"))

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError(self._no_likelihood("loglikelihood_rolling"))

    @staticmethod
    def _no_likelihood(kind: str) -> str:
        return (
            f"{MODEL_NAME} only generates: {kind} requests (multiple-choice and perplexity tasks) need a "
            f"left-to-right likelihood that a block-diffusion student does not give. Use the generative "
            f"variants instead, e.g. {', '.join(GENERATIVE_VARIANTS)}"
        )

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        from tqdm.auto import tqdm

        contexts = [req.args[0] for req in requests]
        settings = [self._settings(req.args[1]) for req in requests]
        encoded = [self.tokenizer(c, add_special_tokens=False)["input_ids"] if c else [] for c in contexts]
        # Batches share settings; longest first so a batch pads little and OOM shows early.
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, s in enumerate(settings):
            groups[s["key"]].append(i)
        results: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc=f"{MODEL_NAME} generate_until", disable=disable_tqdm or self.rank != 0)
        generator = None
        if self.seed is not None:
            generator = torch.Generator(device=self._device).manual_seed(self.seed)
        for key, idx in groups.items():
            s = settings[idx[0]]
            idx.sort(key=lambda i: -len(encoded[i]))
            room = max(1, self.max_length - s["max_new_tokens"] - self.block_size)
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                prompts = []
                for i in chunk:
                    ids = encoded[i]
                    if len(ids) > room:
                        self.truncated_contexts += 1
                        ids = ids[-room:]
                    prompts.append(ids)
                outs = generate(
                    self.model,
                    prompts,
                    mask_id=self.mask_id,
                    block_size=self.block_size,
                    max_new_tokens=s["max_new_tokens"],
                    steps=s["steps"],
                    steps_per_block=s["steps_per_block"],
                    remasking=self.remasking,
                    temperature=s["temperature"],
                    stop_strings=s["until"],
                    tokenizer=self.tokenizer,
                    generator=generator,
                    use_cache=self.use_cache,
                    decoder=self.decoder,
                    stats=self.sampler_stats,
                )
                for i, ids in zip(chunk, outs):
                    text = strip_think(self.tokenizer.decode(ids, skip_special_tokens=True))
                    for stop in s["until"]:
                        if stop:
                            text = text.split(stop)[0]
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(chunk))
        bar.close()
        if self.truncated_contexts:
            log.warning("%s: %d contexts were cut on the left to fit %d positions",
                        MODEL_NAME, self.truncated_contexts, self.max_length)
        for name, count in self.ignored_gen_kwargs.items():
            log.warning("%s: ignored generation argument %r in %d requests", MODEL_NAME, name, count)
        return [r if r is not None else "" for r in results]

    def _settings(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        kw = dict(gen_kwargs or {})
        until = kw.pop("until", None) or []
        if isinstance(until, str):
            until = [until]
        max_new = int(kw.pop("max_gen_toks", None) or kw.pop("max_new_tokens", None) or self.max_gen_toks)
        kw.pop("max_new_tokens", None)
        do_sample = bool(kw.pop("do_sample", False))
        temperature = float(kw.pop("temperature", 0.0) or 0.0)
        temperature = temperature if do_sample and temperature > 0 else self.temperature
        for name in kw:  # top_p, top_k, ...: not part of block-diffusion sampling
            self.ignored_gen_kwargs[name] += 1
        steps = self.steps
        if steps is None and self.steps_per_block is None:
            steps = max_new  # one token per step
        s = {
            "until": tuple(until),
            "max_new_tokens": max_new,
            "temperature": temperature,
            "steps": steps,
            "steps_per_block": self.steps_per_block,
        }
        s["key"] = tuple(sorted((k, v) for k, v in s.items()))
        return s
