"""A check against real dllm (it is not on PyPI, so the test suite cannot install it).

Given a dllm source folder, whose dependencies are installed in the running
environment (transformers 4.57.x, peft, torchmetrics, trl: see
docs/training.md#in-a-dllm-script), this script installs nothing; it puts the folder
first on ``sys.path``, imports dllm and runs:

1. ``examples/dllm_distill.py`` for a few steps on a tiny ``a2d-qwen3`` student built
   with dllm's own classes (the shipped study student init, converted the way dllm's
   A2D conversion does), the shipped teacher A, chat rows loaded by dllm's
   ``load_sft_dataset``; Reverse CALM + CompDemo, dllm's ``CosineAlphaScheduler``,
   evaluation (dllm's eval_nll / eval_ppl, held-out bits per byte);
2. the backend equality: ``tide distill`` (the demo) on ``--backend dllm`` and on
   ``--backend transformers``, weights and logged losses compared bitwise;
3. reloading the example's student through dllm's ``get_model`` / ``get_tokenizer``
   (class, layout, logits equal to the trained model's);
4. dllm's ``BD3LMSampler`` on the reloaded student.

    python bench/dllm_check.py --dllm-src /path/to/dllm [--steps 4] [--out dllm_check.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def import_dllm(src: Path):
    sys.path.insert(0, str(src))
    import dllm

    where = Path(dllm.__file__).resolve()
    if src.resolve() not in where.parents:
        raise SystemExit(f"dllm imported from {where}, not from {src}: uninstall the other copy or pass its folder")
    return dllm


def tiny_a2d_student(folder: Path) -> Path:
    """The shipped student init as dllm's A2DQwen3LMHeadModel (dllm's conversion: the A2D
    config from the causal LM's fields, the causal LM's weights), with its tokenizer."""
    from dllm.pipelines.a2d import A2DQwen3Config, A2DQwen3LMHeadModel

    from tide_plugin.alignment.preprocess import load_tokenizer
    from tide_plugin.shipped import demo_assets
    from tide_plugin.study.models import load_model

    assets = demo_assets("A")
    plain = load_model(Path(assets["model_name_or_path"]))
    fields = plain.config.to_dict()
    for key in ("model_type", "architectures", "auto_map"):
        fields.pop(key, None)
    model = A2DQwen3LMHeadModel(A2DQwen3Config(**fields))
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    model.save_pretrained(folder)
    load_tokenizer(assets["student_tokenizer"]).save_pretrained(folder)
    return folder


def chat_data(folder: Path, train: int = 64, test: int = 16) -> Path:
    from tide_plugin.shipped import DEMO_DATA_DIR

    folder.mkdir(parents=True, exist_ok=True)
    for split, source, n in (("train", "train.jsonl", train), ("test", "heldout.jsonl", test)):
        rows = (DEMO_DATA_DIR / source).read_text().splitlines()[:n]
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps({"messages": json.loads(r)["messages"]}) for r in rows) + "\n")
    return folder


def run_example(work: Path, steps: int) -> tuple[dict, object]:
    from tide_plugin.shipped import demo_assets

    assets = demo_assets("A")
    student = tiny_a2d_student(work / "student")
    data = chat_data(work / "data")
    argv = [
        "--model_name_or_path", str(student), "--dtype", "float32", "--attn_implementation", "sdpa",
        "--teacher_model_name_or_path", assets["teacher_model_name_or_path"],
        "--teacher_tokenizer", assets["teacher_tokenizer"],
        "--dataset_args", str(data), "--max_length", "128", "--num_proc", "1", "--heldout", str(data / "test.jsonl"),
        "--objective", "reverse_calm", "--use_comp_demo", "True", "--masking_schedule", "CosineAlphaScheduler",
        "--output_dir", str(work / "run"), "--max_steps", str(steps), "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "4", "--eval_strategy", "steps", "--eval_steps", str(steps),
        "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--bf16", "False",
        "--use_cpu", "True", "--seed", "0", "--learning_rate", "1e-4",
    ]
    spec = importlib.util.spec_from_file_location("dllm_distill", ROOT / "examples" / "dllm_distill.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["dllm_distill"] = module  # its argument classes are pickled with the checkpoint
    spec.loader.exec_module(module)
    sys.argv = ["dllm_distill.py", *argv]
    start = time.time()
    trainer = module.train()
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    evals = {k: v for h in history for k, v in h.items() if k.startswith("eval_")}
    return {
        "trainer": type(trainer).__name__,
        "student": type(trainer.model).__name__,
        "masking_schedule": trainer.args.masking_schedule,
        "scheduler": type(trainer.scheduler).__name__,
        "steps": trainer.state.global_step,
        "losses": losses,
        "reverse_calm": [h["reverse_calm"] for h in history if "reverse_calm" in h],
        "eval": evals,
        "wall_s": round(time.time() - start, 1),
    }, trainer


def backend_equality(work: Path, steps: int) -> dict:
    from safetensors.torch import load_file

    from tide_plugin.cli.distill import distill, resolve_options

    runs = {}
    for backend in ("dllm", "transformers"):
        out = work / f"demo-{backend}"
        options, run = resolve_options({"preset": "demo", "backend": backend, "output_dir": str(out),
                                        "max_steps": steps, "logging_steps": 1, "use_cpu": True})
        start = time.time()
        metrics = distill(options, run)
        runs[backend] = (load_file(str(out / "model.safetensors")), metrics, time.time() - start)
    (wa, ma, ta), (wb, mb, tb) = runs["dllm"], runs["transformers"]
    equal = wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    la = [(h["step"], h["loss"]) for h in ma["history"]]
    lb = [(h["step"], h["loss"]) for h in mb["history"]]
    return {"weights_bitwise_equal": equal, "tensors": len(wa), "logs_equal": bool(la) and la == lb, "losses": la,
            "wall_s": {"dllm": round(ta, 1), "transformers": round(tb, 1)}}


def reload_and_sample(trainer, folder: Path) -> dict:
    import dllm

    model = dllm.utils.get_model(model_name_or_path=str(folder), dtype="float32", attn_implementation="sdpa").eval()
    tokenizer = dllm.utils.get_tokenizer(model_name_or_path=str(folder))
    ids = torch.arange(3, 35).reshape(1, -1)
    with torch.no_grad():
        trained = trainer.model.eval()(input_ids=ids).logits
        reloaded = model(input_ids=ids).logits
    config = json.loads((folder / "config.json").read_text())
    sampler = dllm.core.samplers.BD3LMSampler(model=model, tokenizer=tokenizer)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "def add(a, b):"}], add_generation_prompt=True,
                                           tokenize=True)
    start = time.time()
    out = sampler.sample([prompt], dllm.core.samplers.BD3LMSamplerConfig(max_new_tokens=32, steps=32, block_size=32),
                         return_dict=True)
    text = dllm.utils.sample_trim(tokenizer, out.sequences.tolist(), [prompt])[0]
    new = out.sequences[0, len(prompt):].tolist()
    return {
        "reloaded_class": type(model).__name__,
        "model_type": config["model_type"],
        "architectures": config["architectures"],
        "logits_bitwise_equal": bool(torch.equal(trained, reloaded)),
        "sampler": {"positions_after_prompt": len(new), "mask_tokens_left": new.count(tokenizer.mask_token_id),
                    "wall_s": round(time.time() - start, 2), "text": text[:120]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dllm-src", required=True, type=Path, help="a dllm source folder (its dependencies installed)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    dllm = import_dllm(args.dllm_src)
    import transformers

    report = {"dllm": str(Path(dllm.__file__).parent), "transformers": transformers.__version__,
              "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        report["example"], trainer = run_example(work, args.steps)
        report["reload_and_sample"] = reload_and_sample(trainer, work / "run" / "checkpoint-final")
        report["backend_equality"] = backend_equality(work, args.steps)
    ok = (report["example"]["steps"] == args.steps and report["reload_and_sample"]["logits_bitwise_equal"]
          and report["reload_and_sample"]["model_type"] == "a2d-qwen3"
          and report["backend_equality"]["weights_bitwise_equal"] and report["backend_equality"]["logs_equal"])
    report["ok"] = bool(ok)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
