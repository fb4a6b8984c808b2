"""One distillation training step, today's full logits against the fused output layer:
peak memory and step time, measured side by side in one run.

A step is what ``DistillLossMixin.distill_forward`` does plus backward and an AdamW
step: student BD3LM forward on ``x_t ⊕ x0``, BD3LM CE, teacher forward (CompDemo: two
views in one batched forward), objective, backward, optimiser step.

- ``full``: student logits ``[b, L, V_S]`` and teacher logits ``[b, L_T, V_T]`` are built;
- ``fused``: hidden states and the output projections; CE and the objective project
  only the rows they read (tide_plugin.logits, tide_plugin.objectives.rows), so no ``[b, L, V]`` tensor exists.

    python bench/output_layer.py                       # CPU: b=4, L=512, V=151,936, a small student
    python bench/output_layer.py --objective kl        # token objective (same pipeline; shared
                                                     # slice = the student vocabulary)
    python bench/output_layer.py --objective reverse_calm,tidal   # several, one after the other
    python bench/output_layer.py --paper               # GPU: Qwen3-0.6B student, LLaDA2.0-mini-shaped
                                                     # teacher (random), bf16, b in {1, 4}, L in {512, 1024}
    python bench/output_layer.py --paper --teacher-layers 4 --configs 1x512,4x512,2x1024

Memory. CPU: each variant runs in a fresh process (``MALLOC_MMAP_THRESHOLD_=65536``,
``malloc_trim``), after one warm-up step (optimiser state exists); the kernel's peak
resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the resident set
before the step. GPU: ``max_memory_allocated`` during the step minus the memory
allocated before it (weights, gradients and optimiser state are resident in both
variants), and the absolute peak. Time: median of ``--repeats`` steps, the variants
alternating in one process so that machine load hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from train_step import teacher_model  # the LLaDA2-shaped MoE teacher, built in the given dtype (same folder)

VARIANTS = ("full", "fused")
TOKEN_OBJECTIVES = ("kl", "reverse_kl", "tidal")
CHUNK_OBJECTIVES = ("calm", "reverse_calm", "tidal_calm")
CPU_SHAPES = dict(
    student=dict(vocab=151936, hidden=64, layers=2, heads=4, kv=2, inter=128),
    teacher=dict(vocab=157184, hidden=64, layers=2, heads=4, kv=2, experts=8, topk=2, moe_inter=32),
)
PAPER_SHAPES = dict(
    student=dict(vocab=151936, hidden=1024, layers=28, heads=16, kv=8, inter=3072),  # Qwen3-0.6B
    teacher=dict(vocab=157184, hidden=2048, layers=20, heads=16, kv=4, experts=256, topk=8, moe_inter=512),  # LLaDA2.0-mini
)


def student_model(vocab, hidden, layers, heads, kv, inter, device, dtype):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, head_dim=hidden // heads if hidden < 1024 else 128,
        tie_word_embeddings=True, max_position_embeddings=4096,
    )
    cfg._attn_implementation = "sdpa"
    with device:
        model = Qwen3ForCausalLM(cfg).to(dtype)
    model.config._attn_implementation = "sdpa"
    return model


def make_batch(objective, b, length, ratio, v_s, v_t, views):
    """Cross pipeline (chunk objectives): chunk c = student token c = ``ratio`` teacher
    tokens; same pipeline (token objectives): the teacher reads the student's ids."""
    import torch

    from tide_plugin.batch import DistillBatch
    from tide_plugin.registry import get_collator

    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, v_s - 2, (b, length), generator=g)
    labels = x0.clone()
    labels[:, : length // 8] = -100  # a prompt
    ones = torch.ones(b, length, dtype=torch.bool)
    if objective in TOKEN_OBJECTIVES:
        batch = DistillBatch(pipeline="same", input_ids=x0, labels=labels, attention_mask=ones)
    else:
        y0 = torch.randint(0, v_t - 2, (b, ratio * length), generator=g)
        chunks = torch.arange(length).expand(b, -1).clone()
        batch = DistillBatch(
            pipeline="cross", input_ids=x0, labels=labels, attention_mask=ones, teacher_input_ids=y0,
            teacher_attention_mask=torch.ones_like(y0, dtype=torch.bool), student_chunk_ids=chunks,
            teacher_chunk_ids=chunks.repeat_interleave(ratio, dim=1), num_chunks=torch.full((b,), length),
        )
    batch = get_collator("noise", mask_id=v_s - 1, teacher_mask_id=v_t - 1, seed=0)(batch)
    if views == 2:
        batch = get_collator("comp_demo", demo_ratio=0.5, seed=0)(batch)
    return batch


class Setup:
    """Models, optimiser, objective and batch of one configuration."""

    def __init__(self, args, b: int, length: int, models: tuple | None = None):
        import torch

        from tide_plugin.registry import get_objective, get_teacher

        self.device = torch.device(args.device)
        dtype = getattr(torch, args.dtype)
        shapes = PAPER_SHAPES if args.paper else CPU_SHAPES
        s_shape, t_shape = dict(shapes["student"]), dict(shapes["teacher"])
        if args.teacher_layers:
            t_shape["layers"] = args.teacher_layers
        if models is None:
            torch.manual_seed(0)
            student = student_model(**s_shape, device=self.device, dtype=dtype)
            models = (student, torch.optim.AdamW(student.parameters(), lr=1e-5),
                      teacher_model(**t_shape, device=self.device, dtype=dtype))
        self.models = models
        self.student, self.opt, net = models
        self.teacher = get_teacher("bidirectional", model=net, mask_token_id=t_shape["vocab"] - 1)
        self.objective = get_objective(args.objective)
        self.batch = make_batch(args.objective, b, length, args.teacher_ratio, s_shape["vocab"], t_shape["vocab"],
                                args.views).to(self.device)
        self.block = 32
        self.describe = (
            f"student {sum(p.numel() for p in self.student.parameters()) / 1e9:.3f}B params (V={s_shape['vocab']}), "
            f"teacher {t_shape['layers']} layers {sum(p.numel() for p in net.parameters()) / 1e9:.3f}B params "
            f"(V={t_shape['vocab']}); b={b}, L={length}, L_T={length if args.objective in TOKEN_OBJECTIVES else args.teacher_ratio * length}, "
            f"views={args.views}, objective={args.objective}, {args.dtype}, {args.device}"
        )

    def step(self, variant: str) -> float:
        from tide_plugin.batch import DistillInputs
        from tide_plugin.bd3lm import bd3lm_nll, block_diffusion_logits, ce_from_nll
        from tide_plugin.heads import block_diffusion_projected
        from tide_plugin.logits import gold_log_probs
        from tide_plugin.training.normalise import local_denominators, normalise, part_units

        batch = self.batch
        forward = block_diffusion_projected if variant == "fused" else block_diffusion_logits
        s_logits = forward(self.student, batch.noisy_input_ids, batch.input_ids, block_size=self.block,
                           attention_mask=batch.attention_mask)
        t_logits = self.teacher.projected_logits(batch) if variant == "fused" else self.teacher(batch)
        maskable = batch.labels != -100
        ce_rows = batch.masked & maskable  # as the trainer: CE's gold log-probs once, shared
        gold = gold_log_probs(s_logits, batch.input_ids, ce_rows)
        sums = self.objective(DistillInputs(batch=batch, student_logits=s_logits, teacher_logits=t_logits,
                                            progress=0.5, student_gold_log_probs=(gold, ce_rows)))
        units = part_units(self.objective)
        parts = normalise(sums, units, local_denominators(batch, sorted(set(units.values()))))
        row_nll = bd3lm_nll(s_logits, batch.input_ids, masked=batch.masked, maskable=maskable,
                            weight=batch.ce_time_weight, gold=gold)
        loss = ce_from_nll(row_nll, maskable) + sum(parts.values())
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())  # also synchronises the device


# --------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def _trim() -> None:
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory(setup: Setup, variant: str) -> dict:
    """Peak bytes above the resident state during one step (after a warm-up step)."""
    import gc

    import torch

    setup.step(variant)  # warm-up: optimiser state, kernels
    gc.collect()
    if setup.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        loss = setup.step(variant)
        peak = torch.cuda.max_memory_allocated()
        return {"extra": peak - before, "total": peak, "loss": loss}
    _trim()
    before = _rss()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := current RSS
    loss = setup.step(variant)
    return {"extra": _hwm() - before, "total": _hwm(), "loss": loss}


def step_times(setup: Setup, repeats: int) -> dict:
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for rep in range(repeats + 1):  # round 0 warms both up
        for variant in (VARIANTS if rep % 2 == 0 else VARIANTS[::-1]):
            t0 = time.perf_counter()
            setup.step(variant)
            if rep:
                times[variant].append(time.perf_counter() - t0)
    return {v: statistics.median(t) for v, t in times.items()}


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    setup = Setup(args, args.b, args.length)
    if args.measure == "memory":
        out = peak_memory(setup, args.variant)
    else:
        out = {"time": step_times(setup, args.repeats)}
    out["describe"] = setup.describe
    print(json.dumps(out))


def _spawn(args, measure: str, variant: str, b: int, length: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--measure", measure, "--variant", variant,
           "--b", str(b), "--length", str(length)]
    for k in ("objective", "dtype", "device", "repeats", "threads", "views", "teacher_ratio", "teacher_layers"):
        v = getattr(args, k)
        if v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    if args.paper:
        cmd.append("--paper")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536") if measure == "memory" else dict(os.environ)
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"worker {measure}/{variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_config(args, b: int, length: int) -> dict:
    """CPU: fresh processes (one per variant for memory, one for time). CUDA: in process."""
    if args.device == "cpu":
        mem = {v: _spawn(args, "memory", v, b, length) for v in VARIANTS}
        tim = _spawn(args, "time", "full", b, length)["time"]
        describe = mem["full"]["describe"]
    else:
        import gc

        import torch

        setup = Setup(args, b, length, models=getattr(args, "_models", None))
        args._models = setup.models  # built once, reused by the next configuration
        mem = {}
        for v in VARIANTS:
            try:
                mem[v] = peak_memory(setup, v)
            except torch.OutOfMemoryError:
                mem[v] = {"extra": float("nan"), "total": float("nan"), "loss": float("nan")}
            gc.collect()
            torch.cuda.empty_cache()
        tim = step_times(setup, args.repeats) if all(m["extra"] == m["extra"] for m in mem.values()) else {v: float("nan") for v in VARIANTS}
        describe = setup.describe
        del setup
        gc.collect()
        torch.cuda.empty_cache()
    return {"b": b, "length": length, "describe": describe, "memory": mem, "time": tim}


def report(rows: list[dict]) -> None:
    gib = 2**30
    print(f"{'objective':<13}{'b':>3}{'L':>6} {'variant':<7}{'step s':>9}{'peak extra GiB':>16}{'peak GiB':>10}{'loss':>9}")
    for r in rows:
        for v in VARIANTS:
            m = r["memory"][v]
            print(f"{r['objective']:<13}{r['b']:>3}{r['length']:>6} {v:<7}{r['time'][v]:>9.3f}{m['extra'] / gib:>16.3f}"
                  f"{m['total'] / gib:>10.2f}{m['loss']:>9.4f}")
        f, u = r["memory"]["full"], r["memory"]["fused"]
        print(f"{'':>23}fused/full: peak extra {u['extra'] / f['extra']:.2f}x, peak {u['total'] / f['total']:.2f}x, "
              f"step time {r['time']['fused'] / r['time']['full']:.2f}x")
    print(json.dumps({"results": rows}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--measure", choices=("memory", "time"), help=argparse.SUPPRESS)
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--b", type=int, default=4)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--paper", action="store_true", help="paper shapes (Qwen3-0.6B student, LLaDA2.0-mini teacher), GPU")
    p.add_argument("--configs", default=None, help="b x L list for --paper, default 1x512,4x512,1x1024,4x1024")
    p.add_argument("--objective", default="reverse_calm",
                   help=f"one of {CHUNK_OBJECTIVES + TOKEN_OBJECTIVES}, or several joined by ','")
    p.add_argument("--views", type=int, default=None, choices=(1, 2), help="teacher views (2: CompDemo)")
    p.add_argument("--teacher-ratio", type=int, default=None, help="teacher tokens per student token (cross)")
    p.add_argument("--teacher-layers", type=int, default=None)
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"))
    p.add_argument("--device", default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the results as JSON to this file")
    args = p.parse_args()
    import torch

    if args.device is None:
        args.device = "cuda" if args.paper and torch.cuda.is_available() else "cpu"
    if args.paper and args.device == "cpu":
        print("--paper needs a GPU (about 40 GiB for the 16B teacher in bf16); use --device cpu shapes instead")
        return 2
    args.dtype = args.dtype or ("bfloat16" if args.paper else "float32")
    args.views = args.views or (2 if args.paper else 1)
    args.teacher_ratio = args.teacher_ratio or (2 if args.paper else 1)
    args.threads = args.threads or torch.get_num_threads()
    if args.worker:
        worker(args)
        return 0
    configs = [(args.b, args.length)]
    if args.paper:
        spec = args.configs or "1x512,4x512,1x1024,4x1024"
        configs = [tuple(int(x) for x in c.split("x")) for c in spec.split(",")]
    objectives = args.objective.split(",")
    unknown = [o for o in objectives if o not in CHUNK_OBJECTIVES + TOKEN_OBJECTIVES]
    if unknown:
        p.error(f"--objective {unknown} not among {CHUNK_OBJECTIVES + TOKEN_OBJECTIVES}")
    rows = []
    for objective in objectives:
        args.objective = objective
        for b, length in configs:
            row = measure_config(args, b, length)
            print(row["describe"], flush=True)
            rows.append(row | {"objective": objective})
    args.__dict__.pop("_models", None)
    report(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": rows}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
