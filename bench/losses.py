"""Peak extra memory and time (forward + backward) of the TIDE objectives against
plain implementations, side by side in one run.

    python bench/losses.py                 # CPU: b=4, L=512, V=32000 (float32 and bfloat16 logits)
    python bench/losses.py --quick         # smaller problem, for a smoke run
    python bench/losses.py --dtypes float32 --repeats 5

On a machine with CUDA it also runs b=8, L=512, V=151936 (bfloat16 logits) on the GPU.

How memory is measured (and why this way):
- Each (objective, implementation) runs in a FRESH subprocess, so allocator caches
  and earlier peaks of other measurements cannot leak into it.
- CPU: tracemalloc does not see torch's allocations, so we use the kernel's own
  resident-set accounting. After building the inputs and running a tiny warm-up
  (which loads kernels and thread pools), the worker resets the process's peak
  RSS (writing ``5`` to ``/proc/self/clear_refs`` resets ``VmHWM`` to the current
  RSS), runs one forward + backward, and reports ``VmHWM - RSS_before``: every
  byte the loss, its autograd graph and the gradient made resident at the peak.
  The worker runs with ``MALLOC_MMAP_THRESHOLD_=65536`` (a fixed threshold, so
  every tensor above 64 KiB is its own mapping, returned to the kernel when
  freed) and calls ``malloc_trim(0)`` before reading the baseline, so freed
  memory that glibc would otherwise keep resident can neither hide nor inflate
  an allocation. If ``clear_refs`` is unavailable the worker says so and falls
  back to ``ru_maxrss`` (the inputs are built without full-size temporaries so
  that the earlier peak does not mask the measurement).
- GPU: ``torch.cuda.max_memory_allocated() - memory_allocated()`` around one
  forward + backward after ``reset_peak_memory_stats()``.
- Both figures include the gradient of the student logits, which any
  implementation must produce (it is the same size as the logits).

Time: median of ``--repeats`` forward + backward passes in a second fresh worker
with the default allocator (as in training), after one full-size warm-up pass. The machine's other load adds noise; the ratio is what
matters, and both sides run under the same conditions in the same invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

OBJECTIVES = ("token_kl", "reverse_kl", "tidal_kl", "calm", "reverse_calm", "tidal_calm")
TAU = 2.0


# --------------------------------------------------------------------------------------
# plain implementations: the obvious code, full-vocabulary float32 tensors, autograd
# --------------------------------------------------------------------------------------
def plain_token(s, t, mask, mode, lam=None, weight=None):
    import torch

    zs = s[mask].float() / TAU
    zt = t[mask].float() / TAU
    log_ps = zs.log_softmax(-1)
    if mode == "tidal":
        b_idx = mask.nonzero()[:, 0]
        lam_r = lam[b_idx][:, None]
        r = torch.softmax((1 - lam_r) * zs.detach() + lam_r * zt, -1)
        kl = (r * (r.log() - log_ps)).sum(-1) * weight[b_idx]
        return kl.sum() / zs.shape[0] * TAU**2
    log_pt = zt.log_softmax(-1)
    if mode == "reverse":
        kl = (log_ps.exp() * (log_ps - log_pt)).sum(-1)
    else:
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)
    return kl.mean() * TAU**2


def plain_chunk_lp(logits, ids, chunk_ids, num_chunks):
    import torch

    lp = logits.float().log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)  # [b, L]
    lp = torch.where(chunk_ids >= 0, lp, 0.0)
    out = torch.zeros(logits.shape[0], num_chunks + 1, dtype=lp.dtype, device=lp.device)
    return out.scatter_add(1, torch.where(chunk_ids >= 0, chunk_ids, num_chunks), lp)[:, :num_chunks]


def plain_chunk(lp_s, lp_t, active, mode, lam=None, weight=None):
    import torch

    s = torch.exp(lp_s / TAU).clamp(1e-7, 1 - 1e-7)
    q = torch.exp(lp_t / TAU).clamp(1e-7, 1 - 1e-7)
    if mode == "reverse_calm":
        loss = -(s * q.log() + (1 - s) * (1 - q).log())
    elif mode == "calm":
        loss = -(q * s.log() + (1 - q) * (1 - s).log())
    else:
        m = ((1 - lam[:, None]) * s + lam[:, None] * q).clamp(1e-7, 1 - 1e-7).detach()
        loss = -(m * s.log() + (1 - m) * (1 - s).log()) * weight[:, None]
    return loss[active].sum() / active.sum().clamp_min(1)


# --------------------------------------------------------------------------------------
# worker: one (objective, implementation) in a fresh process
# --------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def _malloc_trim() -> None:
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def make_inputs(b, length, vocab, dtype, device, seed=0):
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)

    def logits():
        x = torch.empty(b, length, vocab, dtype=dtype, device=device)
        cpu_chunk = 64
        for i in range(0, length, cpu_chunk):  # fill in slices: no full-size temporaries
            x[:, i : i + cpu_chunk] = (torch.randn(b, min(cpu_chunk, length - i), vocab, generator=g) * 3).to(dtype)
        return x

    student, teacher = logits().requires_grad_(True), logits()
    ids = torch.randint(0, vocab, (b, length), generator=g).to(device)
    t_ids = torch.randint(0, vocab, (b, length), generator=g).to(device)
    mask = (torch.rand(b, length, generator=g) < 0.5).to(device)
    # chunks of 1-3 tokens on both sides (every token in a chunk), half of them active
    sizes = torch.randint(1, 4, (b, length), generator=g)
    chunk_ids = torch.empty(b, length, dtype=torch.long)
    n_chunks = []
    for r in range(b):
        c, pos = 0, 0
        while pos < length:
            k = int(sizes[r, c])
            chunk_ids[r, pos : pos + k] = c
            pos, c = pos + k, c + 1
        n_chunks.append(c)
    num_chunks = max(n_chunks)
    t_chunk_ids = chunk_ids.clone()  # same segmentation on the teacher side is enough here
    active = torch.rand(b, num_chunks, generator=g) < 0.5
    for r in range(b):
        active[r, n_chunks[r] :] = False
    lam = torch.rand(b, generator=g).to(device) * 0.9
    weight = (torch.rand(b, generator=g) + 0.5).to(device)
    return dict(
        student=student, teacher=teacher, ids=ids, t_ids=t_ids, mask=mask, chunk_ids=chunk_ids.to(device),
        t_chunk_ids=t_chunk_ids.to(device), num_chunks=num_chunks, active=active.to(device), lam=lam, weight=weight,
    )


def build_step(objective: str, impl: str, x: dict):
    """A closure running one forward + backward."""
    import torch

    from tide_plugin.objectives import functional as fn

    s, t, mask = x["student"], x["teacher"], x["mask"]

    def only_active(chunk_ids):
        hit = x["active"].gather(1, chunk_ids.clamp(0, x["num_chunks"] - 1)) & (chunk_ids >= 0)
        return torch.where(hit, chunk_ids, -1)

    if objective in ("token_kl", "reverse_kl", "tidal_kl"):
        mode = {"token_kl": "forward", "reverse_kl": "reverse", "tidal_kl": "tidal"}[objective]
        if impl == "ours":
            if mode == "tidal":
                return lambda: fn.tidal_kl(s, t, mask, x["lam"], weight=x["weight"], temperature=TAU).backward()
            return lambda: fn.token_kl(s, t, mask, temperature=TAU, reverse=mode == "reverse").backward()
        return lambda: plain_token(s, t, mask, mode, x["lam"], x["weight"]).backward()

    def step():
        if impl == "ours":
            lp_s = fn.chunk_log_probs(s, x["ids"], only_active(x["chunk_ids"]), x["num_chunks"])
            with torch.no_grad():
                lp_t = fn.chunk_log_probs(t, x["t_ids"], only_active(x["t_chunk_ids"]), x["num_chunks"])
            if objective == "tidal_calm":
                loss = fn.tidal_calm(lp_s, lp_t, x["active"], x["lam"], weight=x["weight"], temperature=TAU)
            else:
                loss = fn.calm(lp_s, lp_t, x["active"], temperature=TAU, reverse=objective == "reverse_calm")
        else:
            lp_s = plain_chunk_lp(s, x["ids"], x["chunk_ids"], x["num_chunks"])
            with torch.no_grad():
                lp_t = plain_chunk_lp(t, x["t_ids"], x["t_chunk_ids"], x["num_chunks"])
            loss = plain_chunk(lp_s, lp_t, x["active"], objective, x["lam"], x["weight"])
        loss.backward()

    return step


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    # warm-up on a tiny problem: loads kernels, allocator and thread pools outside the measurement
    tiny = make_inputs(2, 16, 64, dtype, device, seed=1)
    build_step(args.objective, args.impl, tiny)()
    del tiny
    x = make_inputs(args.b, args.length, args.vocab, dtype, device)
    step = build_step(args.objective, args.impl, x)  # the memory run's implementation
    note = ""
    peak_extra, times = None, {}
    if args.measure == "memory":
        if device.type == "cuda":
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            peak_extra = torch.cuda.max_memory_allocated() - before
        else:
            _malloc_trim()
            before = _rss_bytes()
            if _reset_hwm():
                step()
                peak_extra = _hwm_bytes() - before
            else:
                step()
                peak_extra = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
                note = "ru_maxrss fallback"
    else:
        # both implementations alternate on the same inputs, so that load from other
        # processes hits them alike; the first round is a full-size warm-up
        steps = {impl: build_step(args.objective, impl, x) for impl in ("plain", "ours")}
        per_impl: dict[str, list[float]] = {"plain": [], "ours": []}
        for rep in range(args.repeats + 1):
            for impl in (("plain", "ours") if rep % 2 == 0 else ("ours", "plain")):
                x["student"].grad = None
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                steps[impl]()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if rep:
                    per_impl[impl].append(time.perf_counter() - t0)
        times = {impl: statistics.median(v) for impl, v in per_impl.items()}
    print(json.dumps({"peak_extra": peak_extra, "time": times or None, "note": note}))


# --------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------
def run_one(objective, *, b, length, vocab, dtype, device, repeats, threads) -> dict:
    """Fresh workers: one per implementation measures memory (fixed mmap threshold,
    see above); one measures both implementations' time, alternating (default allocator)."""
    args = (b, length, vocab, dtype, device, repeats, threads)
    mem = {impl: _run_worker("memory", objective, impl, *args) for impl in ("plain", "ours")}
    tim = _run_worker("time", objective, "ours", *args)["time"]
    notes = sorted({m["note"] for m in mem.values() if m["note"]})
    return {impl: {"peak_extra": mem[impl]["peak_extra"], "time": tim[impl]} for impl in mem} | {"notes": notes}


def _run_worker(measure, objective, impl, b, length, vocab, dtype, device, repeats, threads) -> dict:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--worker", "--objective", objective, "--impl", impl,
        "--b", str(b), "--length", str(length), "--vocab", str(vocab), "--dtype", dtype, "--device", device,
        "--repeats", str(repeats), "--threads", str(threads), "--measure", measure,
    ]
    env = dict(os.environ)
    if measure == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"worker {objective}/{impl} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--objective", choices=OBJECTIVES)
    p.add_argument("--impl", choices=("ours", "plain"))
    p.add_argument("--b", type=int, default=4)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--dtypes", default="float32,bfloat16", help="CPU logits dtypes, comma-separated")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (CPU)")
    p.add_argument("--measure", choices=("memory", "time"), default="memory", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="b=2, L=128, V=8000")
    p.add_argument("--objectives", default=",".join(OBJECTIVES))
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0

    import torch

    configs = []
    cpu_shape = (2, 128, 8000) if args.quick else (args.b, args.length, args.vocab)
    for dtype in [d for d in args.dtypes.split(",") if d]:  # --dtypes "" skips the CPU runs
        configs.append(("cpu", dtype, *cpu_shape))
    if torch.cuda.is_available():
        configs.append(("cuda", "bfloat16", 8, 512, 151936))
    names = [o for o in args.objectives.split(",") if o]
    print(f"torch {torch.__version__}, {args.threads} thread(s) per CPU worker, median of {args.repeats} timed runs")
    print("peak extra = memory made resident by one forward+backward beyond the inputs (includes the logits' gradient)")
    for device, dtype, b, length, vocab in configs:
        logits_mib = b * length * vocab * torch.empty((), dtype=getattr(torch, dtype)).element_size() / 2**20
        print(f"\n== {device}  b={b} L={length} V={vocab} {dtype}  (one logits tensor = {logits_mib:.0f} MiB)")
        header = f"{'objective':<14}{'plain MiB':>11}{'ours MiB':>10}{'mem ratio':>10}{'plain s':>10}{'ours s':>9}{'time ratio':>11}"
        print(header)
        print("-" * len(header))
        for obj in names:
            res = run_one(obj, b=b, length=length, vocab=vocab, dtype=dtype, device=device,
                          repeats=args.repeats, threads=args.threads)
            pm, om = res["plain"]["peak_extra"] / 2**20, res["ours"]["peak_extra"] / 2**20
            pt, ot = res["plain"]["time"], res["ours"]["time"]
            print(
                f"{obj:<14}{pm:>11.0f}{om:>10.0f}{om / pm:>10.2f}{pt:>10.3f}{ot:>9.3f}{ot / pt:>11.2f}"
                + (f"  ({', '.join(res['notes'])})" if res["notes"] else ""),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
