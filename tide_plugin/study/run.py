"""``tide study`` end to end: corpus -> tokenizers -> teachers -> student init -> arms ->
held-out bits per byte -> ``study.json``, ``study.md``, ``study.png``."""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .arms import ARMS, BASELINE, EQUAL_COMPUTE, RunSettings, run_arm
from ..eval.heldout import encode_heldout, score_student, score_teacher
from ..shipped import write_manifest
from .config import StudyConfig
from .corpus import build_corpus, is_heldout
from .data import align_study_rows
from .models import config_hash, find_artifact, load_model, non_embedding_params, read_meta, save_model, write_meta
from .models import cache_root
from .teachers import study_teacher, train_diffusion_lm
from .tokenizers import load_tokenizers, real_tokenizers, save_tokenizer, save_tokenizers, train_tokenizers


def _log(msg: str) -> None:
    print(f"tide study: {msg}", flush=True)


def _corpus_key(cfg: StudyConfig) -> dict[str, Any]:
    key = cfg.corpus.__dict__.copy()
    key.pop("max_heldout_rows")  # the held-out cap changes no trained artifact
    return key


def tokenizers_key(cfg: StudyConfig) -> str:
    return config_hash("tokenizers/1", _corpus_key(cfg), cfg.student_vocab, cfg.cross_vocab)


def teacher_name(which: str, cfg: StudyConfig, tok_key: str) -> str:
    spec = cfg.teacher_a if which == "A" else cfg.teacher_b
    return f"teacher-{which}-{config_hash('teacher/1', tok_key, spec, cfg.teacher_schedule)}"


def init_name(cfg: StudyConfig, tok_key: str) -> str:
    key = config_hash("student-init/1", tok_key, cfg.student, cfg.init_schedule, cfg.block_size, cfg.max_length)
    return f"student-init-{key}"


def tokenizers_for(cfg: StudyConfig, train_rows: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The study's tokenizers and their hash (trained once, then cached / shipped)."""
    if cfg.tokenizers == "real":
        return real_tokenizers(), "real"
    key = tokenizers_key(cfg)
    name = f"tokenizers-{key}"
    folder = find_artifact(name)
    if folder is None:
        _log(f"training tokenizers on {len(train_rows)} train rows ({name})")
        toks = train_tokenizers(train_rows, student_vocab=cfg.student_vocab, cross_vocab=cfg.cross_vocab)
        folder = cache_root() / name
        save_tokenizers(toks, folder)
        write_meta(folder, {"corpus": _corpus_key(cfg), "python": sys.version.split()[0]})
    return load_tokenizers(folder), key


def teacher_for(which: str, cfg: StudyConfig, toks: dict[str, Any], tok_key: str, train_rows, *, device: str,
                budget_s: float | None, progress: bool) -> tuple[torch.nn.Module, str, dict[str, Any]]:
    """Teacher ``A`` or ``B``: loaded from the shipped / cached artifact, else trained."""
    spec = cfg.teacher_a if which == "A" else cfg.teacher_b
    tok = toks["cross"] if which == "A" else toks["shared"]
    name = teacher_name(which, cfg, tok_key)
    folder = find_artifact(name)
    if folder is None:
        fit = [r for r in train_rows if not is_heldout("valid:" + r["module"], 50)]
        valid = encode_heldout([r for r in train_rows if is_heldout("valid:" + r["module"], 50)][:128], tok)
        data = encode_heldout(fit, tok)

        model = spec.build(tok, seed=cfg.teacher_schedule.seed + (1 if which == "A" else 2))
        scored = study_teacher(which, model, cfg.block_size)  # as the held-out score reads it

        def validate(m):  # train-split modules the teacher does not fit on; never held-out ones
            return score_teacher(scored, valid, tok, samples=2, seed=99).bpb

        _log(f"training teacher {which} ({name}: {spec.arch}, {non_embedding_params(model) / 1e6:.2f}M non-embedding "
             f"parameters) on {len(data)} train rows")
        summary = train_diffusion_lm(study_teacher(which, model, cfg.teacher_schedule.block_size), data,
                                     cfg.teacher_schedule, mask_id=tok.mask_token_id, pad_id=tok.pad_token_id,
                                     device=device, time_budget_s=budget_s, progress=progress, desc=f"teacher {which}",
                                     validate=validate if valid else None)
        folder = cache_root() / name
        save_model(model.cpu(), folder)
        toks_dir = folder / "tokenizer"
        save_tokenizer(tok, toks_dir)
        write_meta(folder, {"spec": spec, "schedule": cfg.teacher_schedule, "tokenizers": tok_key, "device": device,
                            "python": sys.version.split()[0], "torch": torch.__version__, **summary})
    model = load_model(folder).to(device)
    return model, name, read_meta(folder)


def student_init_for(cfg: StudyConfig, toks, tok_key: str, rows_b, teacher_b, *, device: str) -> tuple[Path, str]:
    """The shared student init: one BD3LM student trained briefly with CE (cached)."""
    init = cfg.init_schedule
    name = init_name(cfg, tok_key)
    folder = find_artifact(name)
    if folder is None:
        student = cfg.student.build(toks["student"], seed=init.seed)
        settings = RunSettings(steps=init.steps, batch_size=init.batch_size, lr=init.lr, max_length=cfg.max_length,
                               teacher_max_length=cfg.teacher_max_length, block_size=cfg.block_size, device=device)
        _log(f"training the student init ({name}: {non_embedding_params(student) / 1e6:.2f}M non-embedding "
             f"parameters, {init.steps} CE steps)")
        out = run_arm(ARMS[BASELINE], settings, student=student, teacher=teacher_b, teacher_mask_id=None,
                      rows=rows_b, toks=toks, seed=init.seed)
        folder = cache_root() / name
        save_model(student.cpu(), folder)
        write_meta(folder, {"spec": cfg.student, "schedule": init, "wall_seconds": out["wall_seconds"], "device": device})
    return folder, name


def machine() -> dict[str, Any]:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(), "python": sys.version.split()[0], "torch": torch.__version__}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def export_artifacts(names: list[str], dest: str | Path) -> None:
    """Copy the named artifacts (tokenizers, teacher A, teacher B, student init: to ship
    them under ``tide_plugin/data/study``) and name them in ``manifest.json``."""
    for name in names:
        src = find_artifact(name)
        if src is not None:
            shutil.copytree(src, Path(dest) / name, dirs_exist_ok=True)
    write_manifest(dest, dict(zip(("tokenizers", "teacher_A", "teacher_B", "student_init"), names)))


def run_study(cfg: StudyConfig, output: str | Path, *, device: str = "cpu", teacher_budget_s: float | None = None,
              teachers_only: bool = False, export: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the study; returns (and writes) ``study.json``'s content."""
    from tqdm.auto import tqdm

    from .report import summarise, write_outputs

    t0 = time.time()
    timings: dict[str, float] = {}
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "study.json").exists():
        raise FileExistsError(f"{out / 'study.json'} exists; choose another --output (nothing is overwritten)")
    corpus = build_corpus(cfg.corpus)
    corpus.write(out / "corpus")
    _log(f"corpus from Python {corpus.python}: {corpus.counts['train_rows']} train rows "
         f"({len(corpus.modules('train'))} modules), {corpus.counts['heldout_rows']} held-out rows "
         f"({len(corpus.modules('heldout'))} modules)")
    timings["corpus"] = time.time() - t0
    toks, tok_key = tokenizers_for(cfg, corpus.train)
    timings["tokenizers"] = time.time() - t0 - sum(timings.values())
    teachers, names, metas = {}, [f"tokenizers-{tok_key}"], {}
    for which in ("A", "B"):
        teachers[which], name, metas[which] = teacher_for(which, cfg, toks, tok_key, corpus.train, device=device,
                                                          budget_s=teacher_budget_s, progress=progress)
        names.append(name)
    timings["teachers"] = time.time() - t0 - sum(timings.values())
    aligned = align_study_rows(corpus.train, toks, max_length=cfg.max_length, teacher_max_length=cfg.teacher_max_length)
    _log(f"aligned {aligned.report['kept']} of {aligned.report['conversations']} train conversations for both "
         f"pipelines (discarded: {aligned.report['discarded'] or 'none'}); pipeline A chunk coverage "
         f"{aligned.report['A_chunk_coverage']:.3f}")
    init_dir, init_name = student_init_for(cfg, toks, tok_key, aligned.rows["B"], teachers["B"], device=device)
    names.append(init_name)
    timings["student_init"] = time.time() - t0 - sum(timings.values())
    if export:
        export_artifacts(names, export)
    heldout = {"student": encode_heldout(corpus.heldout, toks["student"]),
               "A": encode_heldout(corpus.heldout, toks["cross"]), "B": encode_heldout(corpus.heldout, toks["shared"])}
    ev = {"samples": cfg.eval_samples, "seed": cfg.eval_seed}

    def score(model, rows=None, samples=None):
        data = heldout["student"] if rows is None else heldout["student"][:rows]
        return score_student(model, data, toks["student"], block_size=cfg.block_size,
                             **{**ev, "samples": samples or cfg.eval_samples})

    teacher_scores = {w: score_teacher(study_teacher(w, teachers[w], cfg.block_size), heldout[w],
                                       toks["cross" if w == "A" else "shared"], **ev) for w in ("A", "B")}
    init_model = load_model(init_dir).to(device)
    init_score = score(init_model)
    init_curve = score(init_model, rows=cfg.curve_rows, samples=2).bpb
    _log("held-out bits per byte: teacher A {:.3f}, teacher B {:.3f}, student init {:.3f}".format(
        teacher_scores["A"].bpb, teacher_scores["B"].bpb, init_score.bpb))
    timings["teacher_and_init_eval"] = time.time() - t0 - sum(timings.values())
    result_base = {"teacher_bpb": {w: s.bpb for w, s in teacher_scores.items()},
                   "teacher_bpb_se": {w: s.se for w, s in teacher_scores.items()},
                   "student_init_bpb": init_score.bpb, "student_init_bpb_se": init_score.se,
                   "config": cfg.to_dict(), "python": corpus.python, "machine": machine(), "device": device,
                   "corpus": corpus.counts, "alignment": aligned.report, "artifacts": names,
                   "teacher_meta": {w: {k: metas[w].get(k) for k in ("steps_done", "steps_planned", "kept_step",
                                                                      "wall_seconds", "device", "python", "torch")}
                                    for w in metas},
                   "params": {"student": non_embedding_params(init_model),
                              "teacher_A": non_embedding_params(teachers["A"]),
                              "teacher_B": non_embedding_params(teachers["B"])}}
    if teachers_only:
        dump({**result_base, "timings_seconds": {k: round(v, 1) for k, v in timings.items()}}, out / "teachers.json")
        _log(f"wrote {out / 'teachers.json'} (teachers and student init only)")
        return result_base
    settings = RunSettings(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, max_length=cfg.max_length,
                           teacher_max_length=cfg.teacher_max_length, block_size=cfg.block_size, device=device,
                           eval_every=cfg.eval_every)
    runs: dict[str, dict[int, dict[str, Any]]] = {a: {} for a in cfg.arms}
    plain = [a for a in cfg.arms if a != EQUAL_COMPUTE]
    bar = tqdm(total=cfg.steps * len(plain) * len(cfg.seeds), desc="arms (steps)", disable=not progress, mininterval=2.0)
    projections: dict[str, Any] = {}  # W by pipeline, built once for every arm and seed

    def one(arm: str, seed: int, steps: int) -> None:
        spec = ARMS[arm]
        student = load_model(init_dir).to(device)
        res = run_arm(spec, settings, student=student, teacher=teachers[spec.pipeline],
                      teacher_mask_id=toks["cross"].mask_token_id if spec.pipeline == "A" else None,
                      rows=aligned.rows[spec.pipeline], toks=toks, seed=seed, steps=steps,
                      evaluate=lambda m: score(m, rows=cfg.curve_rows, samples=2).bpb, progress=bar,
                      projections=projections)
        final = score(student)
        res.update(bpb=final.bpb, eval_se=final.se, curve=[(0, init_curve)] + res["curve"])
        runs[arm][seed] = res
        dump({a: {str(k): {x: v[x] for x in ("bpb", "eval_se", "steps", "wall_seconds", "compute_seconds")} for k, v in per.items()}
              for a, per in runs.items()}, out / "partial_runs.json")  # survives an interrupted run
        bar.set_postfix(arm=arm, seed=seed, bpb=f"{final.bpb:.3f}")

    for seed in cfg.seeds:
        for arm in plain:
            one(arm, seed, cfg.steps)
    bar.close()
    if EQUAL_COMPUTE in cfg.arms:
        # compute_seconds: CPU time on a CPU (other load on a shared machine stretches the
        # wall-clock of whichever arms it overlaps, the CPU time hardly), wall-clock on a GPU
        distilled = [r["compute_seconds"] for a in plain if ARMS[a].objective for r in runs[a].values()]
        base = [r["compute_seconds"] for r in runs[BASELINE].values()]
        factor = (sum(distilled) / len(distilled)) / (sum(base) / len(base)) if distilled else 1.0
        factor = min(max(factor, 1.0), cfg.max_equal_compute_factor)
        steps_ec = int(round(cfg.steps * factor))
        _log(f"{EQUAL_COMPUTE}: distilled arms took {factor:.2f}x the CE arm's compute -> {steps_ec} steps")
        bar = tqdm(total=steps_ec * len(cfg.seeds), desc=EQUAL_COMPUTE, disable=not progress, mininterval=2.0)
        for seed in cfg.seeds:
            one(EQUAL_COMPUTE, seed, steps_ec)
        bar.close()
    timings["arms"] = time.time() - t0 - sum(timings.values())
    timings["total"] = time.time() - t0
    result = {**summarise(runs, cfg.seeds), **result_base, "timings_seconds": {k: round(v, 1) for k, v in timings.items()}}
    write_outputs(result, runs, out)
    _log(f"wrote {out / 'study.md'}, study.json and study.png in {timings['total']:.0f} s")
    return result


def dump(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")
