"""How much each distillation objective moves the student, next to CE, on the demo setting.

The shipped pipeline-A demo (``tide distill``'s default preset: the study's teacher A, its
tokenizers, the student init, the demo rows, the preset's lengths and batch size) with a
float32 student: for a few noised batches (fixed seed) the gradient at the student's
``x_t``-half logits (the full-logits path, ``--fused_output_layer False``) of CE and of
each objective, at each temperature. Printed per objective and ``tau``:

- ``|g|/|g_CE|``: the gradient's norm over CE's (both as the trainer weighs them: CE with
  ``w(t)`` over maskable tokens, the objective with its weight 1 over its own units);
- ``cos``: cosine between the two gradients;
- ``down``: share of active chunks whose gold log-prob ``lp_S`` (summed over the chunk's
  student tokens) a small gradient-descent step lowers: ``<d lp_S / d z, g> > 0``;
- ``down|q>s``: the same among the active chunks the teacher rates higher than the
  student (``lp_T > lp_S``), where a teacher signal should raise ``lp_S``;
- ``q>s|down``: of the chunks it lowers, the share the teacher rates higher.

    python bench/gradient_share.py                       # unbiased chunk noise
    python bench/gradient_share.py --chunk_noise reference --batches 4
    python bench/gradient_share.py --objectives "reverse_calm,reverse_calm:bernoulli_kl"

``--objectives`` takes registered names joined by ``,``; ``name:key`` sets a boolean
option, ``name:key=value`` any option (JSON value). Registered ``projected_kl`` and
``xtoken_hybrid`` are added when not named; an objective that requires ``projection`` gets
``build_projection(teacher_tok, student_tok)`` from ``tide_plugin.alignment.projection``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import tempfile
import time
import warnings
from typing import Any

import torch

import tide_plugin
from tide_plugin.alignment import AlignmentError, chunk_alignment, resolve_mask_id
from tide_plugin.alignment.preprocess import load_jsonl, load_tokenizer
from tide_plugin.batch import DistillInputs
from tide_plugin.bd3lm import bd3lm_nll, block_diffusion_logits, ce_from_nll
from tide_plugin.checkpoints import load_student
from tide_plugin.cli.presets import PRESET_MODELS, PRESETS
from tide_plugin.objectives.functional import chunk_log_probs
from tide_plugin.registry import get_objective, get_registry
from tide_plugin.shipped import demo_assets
from tide_plugin.training.builders import build_trainer
from tide_plugin.training.config import DistillConfig
from tide_plugin.training.normalise import local_denominators, normalise, part_units

DEFAULT_OBJECTIVES = "calm,reverse_calm,reverse_calm:bernoulli_kl,tidal_calm"
OPTIONAL_OBJECTIVES = ("projected_kl", "xtoken_hybrid")


def parse_objectives(spec: str) -> list[tuple[str, str, dict[str, Any]]]:
    """``[(label, name, options)]`` from ``name[:key[=value]]`` items joined by ``,``."""
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        name, *opts = item.split(":")
        options: dict[str, Any] = {}
        for opt in opts:
            key, eq, value = opt.partition("=")
            options[key] = json.loads(value) if eq else True
        out.append((item, name, options))
    available = tide_plugin.available("objective")
    named = {name for _, name, _ in out}
    out += [(n, n, {}) for n in OPTIONAL_OBJECTIVES if n in available and n not in named]
    return out


def demo_rows(assets: dict[str, str], student_tok: Any, teacher_tok: Any, config: DistillConfig, n: int,
              seed: int) -> list[dict]:
    """``n`` demo conversations (a seeded draw) aligned for pipeline A as ``tide preprocess`` aligns them."""
    conversations = load_jsonl(assets["data"])
    random.Random(seed).shuffle(conversations)
    rows = []
    for conv in conversations:
        try:
            ex = chunk_alignment(teacher_tok, student_tok, conv["messages"], max_length=config.max_length,
                                 teacher_max_length=config.teacher_max_length)
        except AlignmentError:
            continue
        rows.append(ex.to_row())
        if len(rows) == n:
            break
    return rows


def projection_diagnostics(batch: Any, z_s: Any, z_t: Any, projection: Any, acc: dict[str, float]) -> None:
    """At each active chunk's first positions: does ``W`` send the teacher's gold token to the
    student's gold token, and how much of the projected target ``Q`` does that token get?
    (Where the two sides' first tokens spell different lengths, ``W`` sends the teacher's
    token to a student token the student's own tokenization does not use there.)"""
    from tide_plugin.objectives.rows import chunk_first_positions

    c = batch.max_chunks
    s_first = chunk_first_positions(batch.student_chunk_ids, c)
    t_first = chunk_first_positions(batch.teacher_chunk_ids, c)
    use = batch.chunk_active & (s_first >= 0) & (t_first >= 0)
    b_idx, c_idx = use.nonzero(as_tuple=True)
    i, j = s_first[b_idx, c_idx], t_first[b_idx, c_idx]
    v_gold, u_gold = batch.input_ids[b_idx, i], batch.teacher_input_ids[b_idx, j]
    p_t = torch.softmax(z_t[b_idx, j].float(), -1)
    mapped = projection.project_rows(p_t[:, : projection.teacher_vocab_size])
    kept = mapped.sum(-1)
    q = mapped / kept.clamp_min(1e-12)[:, None]
    p_s = torch.softmax(z_s[b_idx, i].float(), -1)
    w = projection.dense()
    target = w[u_gold].argmax(-1)
    acc["n"] = acc.get("n", 0.0) + float(len(b_idx))
    acc["same"] = acc.get("same", 0.0) + float((target == v_gold).sum())
    acc["other"] = acc.get("other", 0.0) + float(((target != v_gold) & (w[u_gold].sum(-1) > 0)).sum())
    acc["p_s"] = acc.get("p_s", 0.0) + float(p_s.gather(1, v_gold[:, None]).sum())
    acc["q"] = acc.get("q", 0.0) + float(q.gather(1, v_gold[:, None]).sum())
    acc["p_t"] = acc.get("p_t", 0.0) + float(p_t.gather(1, u_gold[:, None]).sum())
    acc["kept"] = acc.get("kept", 0.0) + float(kept.sum())
    # log-probabilities of the student's gold token, by the example's noise level t
    lq = q.gather(1, v_gold[:, None]).squeeze(1).clamp_min(1e-30).log()
    ls = p_s.gather(1, v_gold[:, None]).squeeze(1).clamp_min(1e-30).log()
    high = batch.t[b_idx] >= 0.5
    hit = target == v_gold
    for tag, sel in (("hit", hit), ("miss", ~hit)):
        acc[f"n_{tag}"] = acc.get(f"n_{tag}", 0.0) + float(sel.sum())
        acc[f"lq_{tag}"] = acc.get(f"lq_{tag}", 0.0) + float(lq[sel].sum())
        acc[f"ls_{tag}"] = acc.get(f"ls_{tag}", 0.0) + float(ls[sel].sum())
    for tag, sel in (("low", ~high), ("high", high)):
        acc[f"n_{tag}"] = acc.get(f"n_{tag}", 0.0) + float(sel.sum())
        acc[f"lq_{tag}"] = acc.get(f"lq_{tag}", 0.0) + float(lq[sel].sum())
        acc[f"ls_{tag}"] = acc.get(f"ls_{tag}", 0.0) + float(ls[sel].sum())


def projection_for(teacher_tok: Any, student_tok: Any) -> Any:
    from tide_plugin.alignment.projection_build import build_projection

    return build_projection(teacher_tok, student_tok)


def chunk_push(grad: torch.Tensor, logits: torch.Tensor, batch: Any) -> torch.Tensor:
    """``[b, C]``: ``<d lp_S(chunk) / d z, grad>`` per chunk (positive: a descent step lowers ``lp_S``).
    ``d l_i / d z_i = onehot(gold_i) - softmax(z_i)``; a token's row belongs to one chunk."""
    b, length, _ = logits.shape
    prob = logits.float().softmax(-1)
    per_token = grad.gather(-1, batch.input_ids[..., None]).squeeze(-1) - (prob * grad).sum(-1)  # [b, L]
    chunks = batch.student_chunk_ids
    out = torch.zeros(b, batch.max_chunks + 1, dtype=torch.float64)
    out.scatter_add_(1, torch.where(chunks >= 0, chunks, batch.max_chunks), per_token.double())
    return out[:, :-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objectives", default=DEFAULT_OBJECTIVES)
    parser.add_argument("--temperatures", default="1,2,5")
    parser.add_argument("--chunk_noise", default="unbiased", choices=["unbiased", "reference"])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", type=float, default=0.5, help="training progress seen by TIDAL objectives")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="gradient_share-") as out:
        measure(args, out)


def measure(args: argparse.Namespace, output_dir: str) -> None:
    start = time.time()

    fields = {f.name for f in dataclasses.fields(DistillConfig)}  # the preset's run keys (demo_arms, ...) are not config
    preset = {k: v for k, v in PRESETS["demo"].items() if k in fields and k != "output_dir"}
    assets = demo_assets(PRESET_MODELS["demo"]["study_assets"])
    student_tok = load_tokenizer(assets["student_tokenizer"])
    teacher_tok = load_tokenizer(assets["teacher_tokenizer"])
    config = DistillConfig(
        **preset, output_dir=output_dir, report_to=[], use_cpu=True,
        fused_output_layer=False, chunk_noise=args.chunk_noise, noise_seed=args.seed,
        teacher_mask_token_id=resolve_mask_id(teacher_tok),
    )
    n_rows = args.batches * int(config.per_device_train_batch_size)
    rows = demo_rows(assets, student_tok, teacher_tok, config, n_rows, args.seed)
    student = load_student(assets["model_name_or_path"], dtype="float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = build_trainer(config, student=student, teacher_model=assets["teacher_model_name_or_path"],
                                train_dataset=rows, student_tokenizer=student_tok, teacher_tokenizer=teacher_tok,
                                backend="transformers")
    student.eval()  # dropout off: the gradients compare, they do not train
    projection = None
    objectives = parse_objectives(args.objectives)
    reg = get_registry()
    if any("projection" in reg.objective_config(n, **o).requirements for _, n, o in objectives):
        # the trainer's own W (padded to the models' output sizes) when its objective needs one
        projection = getattr(trainer, "projection", None) or projection_for(teacher_tok, student_tok)
    taus = [float(t) for t in args.temperatures.split(",")]
    diag: dict[str, float] = {}
    sums: dict[tuple[str, float], dict[str, float]] = {}
    bs = int(config.per_device_train_batch_size)
    for k in range(args.batches):
        batch = trainer.data_collator(rows[k * bs:(k + 1) * bs])["distill_batch"]
        with torch.no_grad():
            teacher_logits = trainer.teacher(batch)
        logits = block_diffusion_logits(student, batch.noisy_input_ids, batch.input_ids,
                                        block_size=int(config.block_size), attention_mask=batch.attention_mask)
        z = logits.detach().float().requires_grad_()
        maskable = batch.labels != -100
        ce = ce_from_nll(bd3lm_nll(z, batch.input_ids, masked=batch.masked, maskable=maskable,
                                   weight=batch.ce_time_weight), maskable)
        (g_ce,) = torch.autograd.grad(ce, z)
        active = batch.chunk_active
        lp_s = chunk_log_probs(z.detach(), batch.input_ids, batch.student_chunk_ids, batch.max_chunks)
        lp_t = chunk_log_probs(teacher_logits.float(), batch.teacher_input_ids, batch.teacher_chunk_ids,
                               batch.max_chunks)
        teacher_higher = active & (lp_t > lp_s)
        if projection is not None:
            projection_diagnostics(batch, z.detach(), teacher_logits, projection, diag)
        for tau in taus:
            for label, name, options in ([("CE", None, {})] if tau == taus[0] else []) + objectives:
                if name is None:
                    g = g_ce
                else:
                    if "+" in name:  # a composition: every component at this temperature
                        objective = get_objective(name, **{part: {"temperature": tau} for part in name.split("+")})
                    else:
                        objective = get_objective(name, **{"temperature": tau, **options})
                    inputs = DistillInputs(batch=batch, student_logits=z, teacher_logits=teacher_logits,
                                           progress=args.progress, projection=projection)
                    units = part_units(objective)  # the parts are sums over their units: divided as in eval
                    parts = normalise(objective(inputs), units, local_denominators(batch, sorted(set(units.values()))))
                    (g,) = torch.autograd.grad(sum(parts.values()), z)
                down = chunk_push(g, z.detach(), batch) > 0
                acc = sums.setdefault((label, tau), dict.fromkeys(("gg", "gc", "cc", "down", "n", "down_hi", "n_hi"), 0.0))
                acc["gg"] += float((g.double() ** 2).sum())
                acc["gc"] += float((g.double() * g_ce.double()).sum())
                acc["cc"] += float((g_ce.double() ** 2).sum())
                acc["down"] += float((down & active).sum())
                acc["n"] += float(active.sum())
                acc["down_hi"] += float((down & teacher_higher).sum())
                acc["n_hi"] += float(teacher_higher.sum())
    print(f"demo pipeline A, chunk_noise={args.chunk_noise}, {args.batches} batches of {bs} (seed {args.seed}), "
          f"progress {args.progress}; {time.time() - start:.0f} s")
    print(f"{'objective':<28} {'tau':>4} {'|g|/|g_CE|':>11} {'cos':>7} {'down':>7} {'down|q>s':>9} {'q>s|down':>9}")
    order = {label: i for i, (label, _, _) in enumerate([("CE", None, None), *objectives])}
    for (label, tau), a in sorted(sums.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        ratio = (a["gg"] / a["cc"]) ** 0.5
        cos = a["gc"] / max((a["gg"] * a["cc"]) ** 0.5, 1e-300)
        down, down_hi = a["down"] / max(a["n"], 1), a["down_hi"] / max(a["n_hi"], 1)
        hi_of_down = a["down_hi"] / max(a["down"], 1)
        print(f"{label:<28} {'-' if label == 'CE' else f'{tau:g}':>4} {ratio:>11.4f} {cos:>7.3f} {down:>7.1%} "
              f"{down_hi:>9.1%} {hi_of_down:>9.1%}")
    n_active, n_hi = next(iter(sums.values()))["n"], next(iter(sums.values()))["n_hi"]
    print(f"active chunks {n_active:.0f}, teacher higher (q > s) in {n_hi / max(n_active, 1):.1%} of them")
    if diag:
        n = max(diag["n"], 1)
        print(f"at the chunks' first positions (tau 1): W maps the teacher's gold token to the student's gold token in "
              f"{diag['same'] / n:.1%} of them (to another student token in {diag['other'] / n:.1%}, the rest to none); mean probability of "
              f"the student's gold token: student {diag['p_s'] / n:.3f}, projected teacher Q {diag['q'] / n:.3f}, "
              f"teacher's own gold {diag['p_t'] / n:.3f}; mass W keeps {diag['kept'] / n:.3f}")
        for tag, what in (("low", "t < 0.5"), ("high", "t >= 0.5"), ("hit", "W sends the teacher's gold to the student's"),
                          ("miss", "W sends it elsewhere")):
            k = max(diag[f"n_{tag}"], 1)
            print(f"  {what}: {diag[f'n_{tag}']:.0f} chunks, mean log-prob of the student's gold token: student "
                  f"{diag[f'ls_{tag}'] / k:.2f} nats, projected teacher Q {diag[f'lq_{tag}'] / k:.2f} nats")


if __name__ == "__main__":
    main()
