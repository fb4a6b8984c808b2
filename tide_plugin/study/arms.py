"""The study's arms, each one run of the distillation trainer (the code users run):
the same student init, steps, learning rate, data order and noise per seed.

``BD3LM`` is the trainer with the CE term alone (objective ``none``, the CE-only
control): no teacher is built and no teacher forward is paid (that is what CE-only
training costs), while the collators draw the same noise as the distilled arms. ``BD3LM (equal compute)`` is the same given the distilled arms' mean compute (CPU time on a CPU, wall-clock on a GPU).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..hookspecs import DEFAULT_BLOCK_SIZE

BASELINE = "BD3LM"
EQUAL_COMPUTE = "BD3LM (equal compute)"


@dataclass(frozen=True)
class ArmSpec:
    """One column of the table: pipeline ``A`` (cross tokenizer, bidirectional MoE teacher)
    or ``B`` (shared vocabulary, block teacher with ``x0_xt``); ``objective`` ``None`` = CE only.

    :param options: per-component objective options (``DistillConfig.objective_config``);
        none given means the objectives' registered defaults.
    :param chunk_noise: pipeline A's chunk noise (``DistillConfig.chunk_noise``);
        ``None`` = the package default, the unbiased per-chunk draw
        (``docs/method.md#chunks``).
    """

    pipeline: str
    objective: str | None
    comp_demo: bool = False
    options: Mapping[str, Mapping[str, Any]] | None = None
    chunk_noise: str | None = None


ARMS: dict[str, ArmSpec] = {
    BASELINE: ArmSpec("B", None),
    "B/KL": ArmSpec("B", "kl_aligned"),
    "B/TIDE-Cross": ArmSpec("B", "reverse_kl_aligned"),
    "B/TIDE-Shared": ArmSpec("B", "taid_aligned", comp_demo=True),
    "A/CALM": ArmSpec("A", "calm"),
    "A/TIDE-Shared": ArmSpec("A", "tidal_calm", comp_demo=True),
    "A/TIDE-Cross": ArmSpec("A", "reverse_calm"),
    EQUAL_COMPUTE: ArmSpec("B", None),
    "A/CE only": ArmSpec("A", None),
    "A/TIDE-Cross (reference noise)": ArmSpec("A", "reverse_calm", chunk_noise="reference"),
    "A/TIDE-Cross (Bernoulli KL)": ArmSpec("A", "reverse_calm", options={"reverse_calm": {"bernoulli_kl": True}}),
    "A/P-KL": ArmSpec("A", "projected_kl"),
    "A/P-KL + TIDE-Cross": ArmSpec("A", "projected_kl+reverse_calm"),
    "A/X-Token hybrid": ArmSpec("A", "xtoken_hybrid"),
}
"""Arm name -> spec. Objective names are the registry's (the ``*_aligned`` spellings read
template pairs, docs/method.md#template-alignment). Not in the default table: ``A/CE only``, a diagnostic (CE alone
on pipeline A's batches, whose noise closes every hit chunk), ``A/TIDE-Cross (reference
noise)``, the paper's setting (the reference's chunk noise, which masks more than ``t``
asks for), and the full-distribution cross-tokenizer arms (``docs/method.md#projected-kl``,
``docs/method.md#hybrid-kl``) with the Bernoulli-KL form of Reverse CALM
(``docs/method.md#calm``): name them with ``--arms``."""
DEFAULT_ARMS = tuple(ARMS)[: tuple(ARMS).index("A/CE only")]


def check_arm(name: str) -> None:
    """One line when an arm cannot run in this installation: its objective (or an option
    it passes) is not registered, or the trainer has no ``chunk_noise`` to set."""
    from ..registry import get_objective
    from ..training import DistillConfig

    spec = ARMS[name]
    if spec.chunk_noise is not None and "chunk_noise" not in {f.name for f in dataclasses.fields(DistillConfig)}:
        raise ValueError(f"arm {name!r} needs DistillConfig.chunk_noise ({spec.chunk_noise!r}), which this version lacks")
    if spec.objective is None:
        return
    from ..registry import UnknownPluginError

    options = dict(spec.options or {})
    for part in spec.objective.split("+"):
        try:
            get_objective(part, **options.get(part, {}))
        except UnknownPluginError as exc:
            raise ValueError(
                f"arm {name!r} needs the objective {part!r}, which is not registered here (`tide plugins` lists "
                "the registered ones)"
            ) from exc
        except TypeError as exc:  # an option the objective's config does not take
            raise ValueError(f"arm {name!r} passes {part} options {options.get(part)}, which this version does not "
                             f"take ({exc})") from exc


@dataclass(frozen=True)
class RunSettings:
    """What every arm shares."""

    steps: int
    batch_size: int
    lr: float
    max_length: int
    teacher_max_length: int
    block_size: int = DEFAULT_BLOCK_SIZE
    warmup_ratio: float = 0.05
    device: str = "cpu"
    eval_every: int = 0


def distill_config(spec: ArmSpec, settings: RunSettings, *, seed: int, steps: int, output_dir: str, shared_vocab: int,
                   teacher_mask_id: int | None = None) -> Any:
    """The arm's run configuration; ``teacher_mask_id``: ``m_T`` of pipeline A's teacher."""
    from ..training import DistillConfig

    pipe = {"A": {"pipeline": "cross", "teacher": "bidirectional", "teacher_mask_token_id": teacher_mask_id},
            "B": {"pipeline": "shared", "teacher": "block", "concat_order": "x0_xt", "shared_vocab_size": shared_vocab}}
    noise = {}
    if spec.pipeline == "A" and "chunk_noise" in {f.name for f in dataclasses.fields(DistillConfig)}:
        noise["chunk_noise"] = spec.chunk_noise or "unbiased"  # every A arm says which noise it trains on
    return DistillConfig(
        output_dir=output_dir,
        objective=spec.objective or "none",
        objective_config=dict(spec.options) if spec.options else None,
        use_comp_demo=spec.comp_demo,
        max_length=settings.max_length,
        teacher_max_length=settings.teacher_max_length,
        block_size=settings.block_size,
        max_steps=steps,
        learning_rate=settings.lr,
        lr_scheduler_type="cosine",
        warmup_steps=int(round(settings.warmup_ratio * steps)),
        weight_decay=0.01,
        per_device_train_batch_size=settings.batch_size,
        logging_steps=max(1, steps // 20),
        save_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        noise_seed=seed,
        dataloader_pin_memory=False,
        use_cpu=settings.device == "cpu",
        disable_tqdm=True,
        **noise,
        **pipe[spec.pipeline],
    )


def run_arm(
    spec: ArmSpec,
    settings: RunSettings,
    *,
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    teacher_mask_id: int | None,
    rows: Sequence[dict[str, Any]],
    toks: dict[str, Any],
    seed: int,
    steps: int | None = None,
    evaluate: Callable[[torch.nn.Module], float] | None = None,
    progress: Any = None,
    projections: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``student`` in place; returns ``{"wall_seconds", "cpu_seconds", "compute_seconds", "steps",
    "curve": [(step, bpb)], "log"}`` (``compute_seconds``: this process's CPU time on a CPU, which
    other load on the machine barely changes, unlike the wall-clock; the wall-clock on a GPU).

    ``projections``: the study's vocabulary projections ``W`` by pipeline, filled on first
    use, so every arm and seed of a study reads the one ``W`` its tokenizers give."""
    import transformers

    from ..training import build_trainer, run_projection
    from ..training.plan import plan_run

    steps = settings.steps if steps is None else steps
    tok = toks["student"]
    curve: list[tuple[int, float]] = []
    eval_time = [0.0, 0.0]  # wall, CPU

    class _Curve(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ARG002
            if progress is not None:
                progress.update(1)
            if evaluate is not None and settings.eval_every and state.global_step % settings.eval_every == 0:
                t0, c0 = time.time(), time.process_time()
                curve.append((state.global_step, evaluate(model)))
                eval_time[0] += time.time() - t0
                eval_time[1] += time.process_time() - c0

    with tempfile.TemporaryDirectory(prefix="tide-study-") as tmp:
        config = distill_config(spec, settings, seed=seed, steps=steps, output_dir=tmp, shared_vocab=len(tok),
                                teacher_mask_id=teacher_mask_id)
        plan = plan_run(config)
        projections = {} if projections is None else projections
        if plan.needs_projection and spec.pipeline not in projections:
            # W: the arm's teacher vocabulary to the student's
            teacher_tok = toks["cross" if spec.pipeline == "A" else "shared"]
            projections[spec.pipeline] = run_projection(plan, teacher_tok, tok, say=None)
        trainer = build_trainer(
            config,
            plan=plan,
            student=student,
            teacher_model=teacher,
            train_dataset=list(rows),
            student_tokenizer=tok,
            student_mask_id=tok.mask_token_id,
            backend="transformers",
            callbacks=[_Curve()],
            projection=projections.get(spec.pipeline) if plan.needs_projection else None,
        )
        for noisy in (transformers.PrinterCallback, transformers.trainer_callback.ProgressCallback):
            trainer.remove_callback(noisy)  # the study draws its own progress bar
        start, cpu_start = time.time(), time.process_time()
        trainer.train()
        wall = time.time() - start - eval_time[0]  # training only: the curve's evaluations excluded
        cpu = time.process_time() - cpu_start - eval_time[1]
        on_cpu = trainer.args.device.type == "cpu"
        log = [h for h in trainer.state.log_history if "loss" in h]
    student.eval()
    # what the equal-compute arm matches: CPU time on a CPU (other load stretches the wall-clock
    # of whichever arms it overlaps, CPU time hardly), the wall-clock on an accelerator
    return {"wall_seconds": wall, "cpu_seconds": cpu, "compute_seconds": cpu if on_cpu else wall, "steps": steps,
            "curve": curve, "log": log}
