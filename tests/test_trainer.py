"""DistillBD3LMTrainer end to end on tiny models, reference-style flags, loss
normalisation under gradient accumulation, and the `tide distill` demo."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from helpers.distill import EOS, MASK, V, split_batch, synthetic_rows

from tide_plugin.objectives.base import PipelineMismatchError
from tide_plugin.checkpoints import TIDE_CONFIG_NAME
from tide_plugin.cli.distill import add_arguments, distill, resolve_options
from tide_plugin.cli.reference_args import CliDistillConfig
from tide_plugin.training import DistillConfig, build_trainer
from tide_plugin.tiny import tiny_qwen3, tiny_qwen3_moe


def _config(tmp_path, **kw) -> DistillConfig:
    base = dict(
        output_dir=str(tmp_path / "run"),
        objective="kl+tidal",
        pipeline="same",
        shared_vocab_size=V,
        block_size=4,
        max_steps=4,
        logging_steps=2,
        per_device_train_batch_size=4,
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_pin_memory=False,
    )
    base.update(kw)
    return DistillConfig(**base)


def _trainer(cfg, n=32):
    return build_trainer(
        cfg,
        student=tiny_qwen3(V, seed=0),
        teacher_model=tiny_qwen3_moe(V, seed=1),
        train_dataset=synthetic_rows(n),
        student_mask_id=MASK,
        student_eos_id=EOS,
    )


def test_end_to_end_logs_every_part_and_saves_a_reloadable_student(tmp_path):
    """Two SGD steps of two micro-batches each, checked against the same run rebuilt
    from the primitives (student forward, teacher adapter, bd3lm_ce and the loss
    functions, with lambda from docs/method.md#tidal's formula): every logged part, the logged
    lambda and progress, and the parameters after both steps."""
    import copy
    import math

    from tide_plugin.bd3lm import bd3lm_ce, block_diffusion_logits
    from tide_plugin.objectives import functional as fn

    lr = 0.05
    cfg = _config(tmp_path, use_comp_demo=True, gradient_accumulation_steps=2, max_steps=2, logging_steps=1,
                  optim="sgd", learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=0.0)
    tr = _trainer(cfg)

    class Recording:  # the run's own collator, keeping a copy of every batch it hands out
        def __init__(self, inner):
            self.inner, self.batches = inner, []

        def __call__(self, rows):
            out = self.inner(rows)
            self.batches.append(copy.deepcopy(out["distill_batch"]))
            return out

    tr.data_collator = Recording(tr.data_collator)
    model = copy.deepcopy(tr.model)  # the student before training
    tr.train()
    batches = tr.data_collator.batches[:4]  # the loader may collate one batch ahead
    assert len(batches) == 4

    def step(model, micro, progress):
        """Loss of one optimizer step (as the gradient sees it: every term summed over the
        window and divided by the window's count of its units) and the logged means (each
        micro-batch normalised by its own count, averaged over the window)."""
        n_window = sum(int((b.labels != -100).sum()) for b in micro)
        rows_window = sum(int(b.masked.sum()) for b in micro)  # kl's and tidal's unit: masked rows (docs/method.md#normalisation)
        total, logs = 0.0, {"ce": 0.0, "kl": 0.0, "tidal": 0.0, "lambda/tidal": 0.0}
        for b in micro:
            zs = block_diffusion_logits(model, b.noisy_input_ids, b.input_ids, block_size=4,
                                        attention_mask=b.attention_mask)
            zt = tr.teacher(b)
            maskable = b.labels != -100
            ce_sum = bd3lm_ce(zs, b.input_ids, masked=b.masked, maskable=maskable, weight=b.ce_time_weight, denominator=1)
            lam = (0.1 + 0.8 * (1 - math.cos(math.pi * progress)) / 2) * (1 - b.t)  # cosine decay, both axes
            kl = fn.token_kl(zs, zt, b.masked, temperature=2.0, shared_vocab_size=V)
            tidal = fn.tidal_kl(zs, zt, b.masked, lam, temperature=2.0, shared_vocab_size=V)
            total = total + ce_sum / n_window + (kl + tidal) * int(b.masked.sum()) / rows_window
            for key, value in (("ce", ce_sum / maskable.sum()), ("kl", kl), ("tidal", tidal), ("lambda/tidal", lam.mean())):
                logs[key] += float(value.detach()) / len(micro)
        return total, logs

    logged = [h for h in tr.state.log_history if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2]
    params = [p for p in model.parameters() if p.requires_grad]
    for k, progress in enumerate((0.0, 0.5)):  # progress = global_step / max_steps when the step ran
        loss, want = step(model, batches[2 * k : 2 * k + 2], progress)
        for key, value in want.items():
            # rel 5e-4: after the first update the fused and the plain path round differently
            assert logged[k][key] == pytest.approx(value, rel=5e-4, abs=1e-6), (k, key)
        assert logged[k]["progress"] == progress
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * g
    for mine, theirs in zip(model.parameters(), tr.model.parameters()):
        torch.testing.assert_close(theirs, mine, atol=1e-5, rtol=1e-4)
    assert not any(p.requires_grad for p in tr.teacher.model.parameters())
    out = tmp_path / "saved"
    tr.save_model(str(out))
    info = json.loads((out / TIDE_CONFIG_NAME).read_text())
    assert info["mask_token_id"] == MASK and info["block_size"] == 4
    from transformers import AutoModelForCausalLM

    again = AutoModelForCausalLM.from_pretrained(str(out))
    assert again.config.mask_token_id == MASK
    ids = torch.randint(0, V, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, tr.model(input_ids=ids).logits)


@pytest.mark.parametrize("norm", ["token", "sequence", "batch"])
def test_normalisation_survives_gradient_accumulation(tmp_path, norm):
    """CE over two micro-batches (as the Trainer combines them: each divided by the
    accumulation steps) equals the CE of the whole batch."""
    tr = _trainer(_config(tmp_path, objective="kl", loss_norm_type=norm))
    tr.model.train()
    full = tr.data_collator(synthetic_rows(4, seed=3))["distill_batch"]
    halves = [split_batch(full, [0, 1]), split_batch(full, [2, 3])]
    assert int((halves[0].labels != -100).sum()) != int((halves[1].labels != -100).sum())

    def ce_used(batch):
        loss, logged = tr.distill_forward(tr.model, batch)
        return loss.detach() - logged["kl"]

    tr.get_batch_samples(iter([{"distill_batch": full}]), 1, torch.device("cpu"))
    whole = ce_used(full)
    tr.get_batch_samples(iter([{"distill_batch": h} for h in halves]), 2, torch.device("cpu"))
    accumulated = sum(ce_used(h) for h in halves) / 2
    torch.testing.assert_close(accumulated, whole, atol=1e-5, rtol=1e-5)


def test_a_bf16_run_does_not_leak_its_precision_into_the_next(tmp_path, monkeypatch):
    """transformers 4.57 writes --bf16 into ACCELERATE_MIXED_PRECISION and its Trainer reads
    the precision from there: a float32 run built after a bf16 one in the same process
    must still train in float32, and a launcher's own setting must survive."""
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    _trainer(_config(tmp_path / "a", bf16=True), n=8)
    assert _trainer(_config(tmp_path / "b"), n=8).accelerator.mixed_precision == "no"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # as `accelerate launch --mixed_precision bf16` does
    from tide_plugin.training import compat

    monkeypatch.setattr(compat, "_mixed_precision_env", {"launcher": None, "written": None, "seen": False})
    assert _trainer(_config(tmp_path / "c"), n=8).accelerator.mixed_precision == "bf16"


def test_objective_checked_against_pipeline_when_built(tmp_path):
    with pytest.raises(PipelineMismatchError, match="reverse_calm"):
        _trainer(_config(tmp_path, objective="reverse_calm", pipeline="same"))


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return resolve_options(parser.parse_args(argv))


@pytest.mark.filterwarnings("ignore:composing .* with the reverse objective")
def test_reference_style_command_line_is_accepted(tmp_path):
    options, run = _parse(
        [
            "--distill_mode", "reverse_kl_aligned+taid_aligned",
            "--use_comp_demo", "True",
            "--demo_ratio", "0.4",
            "--kl_temperature", "3.0",
            "--alm_temperature", "5.0",
            "--taid_lambda_init", "0.2",
            "--taid_axis_mode", "training_only",
            "--taid_timestep_weight", "midrange",
            "--teacher_mask_token_id", "151665",
            "--shared_vocab_size", "151646",
            "--concat_order", "x0_xt",
            "--teacher", "block",
            "--learning_rate", "5e-5",
            "--num_train_epochs", "10",
            "--per_device_train_batch_size", "2",
            "--bf16", "False",
            "--output_dir", str(tmp_path / "ref"),
        ]
    )
    cfg = CliDistillConfig(**options)
    assert cfg.objective == "reverse_kl_aligned+taid_aligned" and cfg.pipeline == "shared"
    assert cfg.collator_names() == ["distill_pad", "noise", "comp_demo"] and cfg.demo_ratio == 0.4
    assert cfg.teacher_mask_token_id == 151665 and cfg.shared_vocab_size == 151646 and cfg.concat_order == "x0_xt"
    assert cfg.learning_rate == 5e-5 and cfg.num_train_epochs == 10 and cfg.per_device_train_batch_size == 2
    kw = cfg.objective_kwargs()
    assert kw["reverse_kl_aligned"] == {"temperature": 3.0}
    assert kw["taid_aligned"] == {
        "temperature": 3.0, "lambda_init": 0.2, "axis": "training_only", "timestep_weight": "midrange"
    }
    import tide_plugin

    obj = tide_plugin.get_objective(cfg.objective, **kw)
    assert [c.config.aligned for c in obj.components] == [True, True]
    # chunk modes pick the cross pipeline and the chunk temperature
    options, _ = _parse(["--distill_mode", "alm_taid", "--alm_temperature", "5.0", "--preset", "none"])
    cfg = CliDistillConfig(**options)
    assert cfg.pipeline == "cross" and cfg.objective_kwargs() == {"temperature": 5.0}


@pytest.mark.parametrize(
    ("objective", "pipeline"),
    [
        ("reverse_alm", "cross"),
        ("tidal_calm+calm", "cross"),
        ("kl_aligned", "shared"),
        ("taid_aligned", "shared"),
        ("kl", "same"),
        ("jsd", "same"),  # a third-party objective declares token alignment too
    ],
)
def test_pipeline_is_implied_by_what_the_objectives_declare(objective, pipeline, tmp_path):
    cfg = DistillConfig(output_dir=str(tmp_path), objective=objective, use_cpu=True, report_to="none")
    assert cfg.pipeline == pipeline
    explicit = DistillConfig(output_dir=str(tmp_path), objective=objective, pipeline="cross", use_cpu=True)
    assert explicit.pipeline == "cross"  # given explicitly, it is kept (and checked when the trainer is built)


def test_unknown_objective_fails_when_the_config_is_built(tmp_path):
    import tide_plugin

    with pytest.raises(tide_plugin.UnknownPluginError, match="Did you mean 'reverse_calm'"):
        DistillConfig(output_dir=str(tmp_path), objective="reverse_clam", use_cpu=True)


def test_yaml_config_and_flag_precedence(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("objective: calm\nlearning_rate: 0.001\nmax_steps: 7\npreset: demo\n")
    options, run = _parse(["--config", str(path), "--max_steps", "3"])
    assert options["objective"] == "calm" and options["learning_rate"] == 0.001 and options["max_steps"] == 3
    assert CliDistillConfig(**options).pipeline == "cross" and run["study_assets"] == "A"
    options, _ = _parse(["--num_train_epochs", "2"])
    assert options["num_train_epochs"] == 2 and "max_steps" not in options
    with pytest.raises(ValueError, match="unknown options.*'nonsense'"):
        path.write_text("nonsense: 1\n")
        _parse(["--config", str(path)])


def test_bad_values_name_what_is_allowed(tmp_path):
    with pytest.raises(ValueError, match="'tokens'.*token"):
        _config(tmp_path, loss_norm_type="tokens")
    with pytest.raises(ValueError, match="'zx'"):
        _config(tmp_path, concat_order="zx")
    with pytest.raises(ValueError, match="demo_ratio 1.5"):
        _config(tmp_path, demo_ratio=1.5)


def test_demo_presets_compare_with_a_control_on_a_fine_tuning_schedule_in_float32():
    from tide_plugin.cli.distill import run_arms

    options, run = _parse([])
    config = CliDistillConfig(**options)
    assert config.objective == "projected_kl+reverse_calm" and run_arms(run, config) == ["none", "reverse_calm"]
    assert (config.learning_rate, config.lr_scheduler_type) == (2e-4, "cosine") and "dtype" not in options  # float32
    assert config.get_warmup_steps(config.max_steps) == 6  # 10% of the 60 steps
    options, run = _parse(["--preset", "shared"])
    assert run_arms(run, CliDistillConfig(**options)) == ["none"]
    options, run = _parse(["--demo_arms", "", "--warmup_steps", "2"])  # no comparison; warm-up in steps
    assert run_arms(run, CliDistillConfig(**options)) == [] and CliDistillConfig(**options).get_warmup_steps(60) == 2


@pytest.mark.slow
def test_demo_writes_checkpoint_metrics_and_plot_and_compares_with_a_paired_control(tmp_path, capsys):
    # The demo's three students (Reverse CALM saved, P-KL + Reverse CALM, the CE-only
    # control). Reverse CALM at weight 0 on full logits trains exactly what CE alone trains,
    # so the saved student's difference to the control is exactly 0 only if the comparison
    # students start from its init and see its data order and noise draws.
    options, run = _parse(["--max_steps", "2", "--logging_steps", "1", "--output_dir", str(tmp_path / "demo"),
                           "--objective", "reverse_calm", "--demo_arms", "none,projected_kl+reverse_calm",
                           "--fused_output_layer", "False", "--objective_config", '{"reverse_calm": {"weight": 0.0}}'])
    run["max_samples"] = 16
    metrics = distill(options, run)
    out = tmp_path / "demo"
    assert metrics["parts"] == ["ce", "reverse_calm"] and len(metrics["history"]) == 2
    assert (out / "loss.png").stat().st_size > 1000 and (out / "metrics.json").exists()
    # the shipped trained teacher knows more than the student: held-out bits per byte
    heldout = json.loads((out / "metrics.json").read_text())["heldout"]
    assert set(heldout) == {"teacher_bpb", "student_bpb_before", "student_bpb_after", "student_bpb_change",
                            "student_bpb_change_se", "ce_only_bpb_after", "arms"}
    assert heldout["teacher_bpb"] < heldout["student_bpb_before"]
    change = heldout["student_bpb_after"] - heldout["student_bpb_before"]
    assert heldout["student_bpb_change"] == pytest.approx(change, abs=1e-9) and heldout["student_bpb_change_se"] > 0
    assert [c[0] for c in metrics["heldout_curve"]] == [0, 1, 2]
    arms = heldout["arms"]
    assert list(arms) == ["reverse_calm", "projected_kl+reverse_calm"]
    assert arms["reverse_calm"] == {"bpb_after": heldout["student_bpb_after"], "minus_ce": 0.0, "minus_ce_se": 0.0}
    assert heldout["ce_only_bpb_after"] == heldout["student_bpb_after"] != heldout["student_bpb_before"]
    ours = arms["projected_kl+reverse_calm"]
    assert ours["minus_ce"] == pytest.approx(ours["bpb_after"] - heldout["ce_only_bpb_after"], abs=1e-12)
    assert ours["minus_ce"] != 0.0 and ours["minus_ce_se"] > 0
    assert list(metrics["heldout_curves"]) == ["reverse_calm", "CE only (control)", "projected_kl+reverse_calm"]
    assert all([c[0] for c in curve] == [0, 1, 2] for curve in metrics["heldout_curves"].values())
    # the last printed lines say, per objective, how it compares with the control
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-3].startswith("held-out bits per byte against the CE-only control")
    assert printed[-2] == f"reverse_calm: {heldout['ce_only_bpb_after']:.4f} bits/byte, identical to the CE-only control"
    assert printed[-1].startswith(f"projected_kl+reverse_calm: {ours['bpb_after']:.4f} bits/byte, "
                                  f"{abs(ours['minus_ce']):.4f} ± ")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    info = json.loads((out / TIDE_CONFIG_NAME).read_text())
    assert info["mask_token_id"] == tok.mask_token_id == model.config.mask_token_id
    assert info["block_size"] == 32 and model.config.vocab_size == len(tok)


@pytest.mark.slow
def test_shared_preset_runs_tidal_with_comp_demo(tmp_path):
    options, run = _parse(["--preset", "shared", "--max_steps", "2", "--logging_steps", "1",
                           "--output_dir", str(tmp_path / "shared")])
    run["max_samples"] = 16
    metrics = distill(options, run)
    assert metrics["parts"] == ["ce", "tidal"]
    assert all("lambda/tidal" in h for h in metrics["history"])
    # the shipped trained block teacher (the student's vocabulary, another template) beats the student
    heldout = json.loads((tmp_path / "shared" / "metrics.json").read_text())["heldout"]
    assert heldout["teacher_bpb"] < heldout["student_bpb_before"] - 0.5


def test_backend_follows_dllm_availability(tmp_path):
    """With dllm importable the dllm-based trainer is picked automatically; without it
    the transformers one is, and asking for dllm explicitly fails with a clear error.
    dllm is not on the package registry, so CI exercises the second branch; the first
    runs wherever dllm is installed from its source (transformers 4.57.x)."""
    from tide_plugin.training import DistillBD3LMTrainer, dllm_available, trainer_class

    assert trainer_class("transformers") is DistillBD3LMTrainer
    with pytest.raises(ValueError, match="trainer backend 'deepspeed' is not one of auto, dllm, transformers"):
        trainer_class("deepspeed")
    if not dllm_available():
        assert trainer_class() is DistillBD3LMTrainer
        with pytest.raises(ImportError, match="needs dllm .install it from its source"):
            trainer_class("dllm")
        return
    from tide_plugin.integrations.dllm import DllmDistillBD3LMTrainer, DllmDistillConfig

    assert trainer_class() is DllmDistillBD3LMTrainer

    cfg = _config(tmp_path, objective="tidal", max_steps=2, logging_steps=1)
    tr = build_trainer(
        cfg,
        student=tiny_qwen3(V, seed=0),
        teacher_model=tiny_qwen3_moe(V, seed=1),
        train_dataset=synthetic_rows(16),
        student_mask_id=MASK,
        student_eos_id=EOS,
    )
    assert isinstance(tr, DllmDistillBD3LMTrainer)
    tr.train()
    assert [h["step"] for h in tr.state.log_history if "tidal" in h] == [1, 2]
    dcfg = DllmDistillConfig(output_dir=str(tmp_path / "d"), objective="alm", use_cpu=True)
    assert dcfg.pipeline == "cross" and dcfg.eval_strategy == "no" and not dcfg.bf16 and dcfg.report_to == []


@pytest.mark.parametrize("name,pipeline,teacher", [("tide_cross", "cross", "bidirectional"), ("tide_shared", "shared", "block")])
def test_shipped_recipe_configs_resolve(name, pipeline, teacher, tmp_path):
    from importlib.resources import files

    path = files("tide_plugin") / "configs" / f"{name}.yaml"
    options, run = _parse(["--config", str(path), "--output_dir", str(tmp_path / name)])
    assert options.pop("bf16") is True  # the recipes train in bf16 on GPUs; this machine may have none
    cfg = CliDistillConfig(**options)
    assert cfg.pipeline == pipeline and cfg.teacher == teacher and cfg.block_size == 32
    assert run["model_name_or_path"].startswith("/path/")
    import tide_plugin

    from tide_plugin.batch import PipelineInfo

    objective = tide_plugin.get_objective(cfg.objective, **cfg.objective_kwargs())
    objective.check_pipeline(PipelineInfo(pipeline=cfg.pipeline, shared_vocab_size=cfg.shared_vocab_size))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ddp", {"ACCELERATE_MIXED_PRECISION": "bf16"}),
        ("fsdp", {"ACCELERATE_USE_FSDP": "true", "FSDP_SHARDING_STRATEGY": "FULL_SHARD",
                  "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP", "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT",
                  "FSDP_USE_ORIG_PARAMS": "true"}),
        ("zero2", {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
                   "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "none"}),
    ],
)
def test_shipped_accelerate_configs(name, expected):
    """Each shipped config goes through accelerate's own launcher: its loader (which
    refuses unknown keys and unknown distributed types), the launch validation, and
    the environment the launcher hands every process."""
    from importlib.resources import files

    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    path = str(files("tide_plugin") / "configs" / f"{name}.yaml")
    argv = ["--config_file", path, "-m", "tide_plugin.cli", "distill", "--config", "run.yaml"]
    args, defaults, mixed_precision = _validate_launch_command(launch_command_parser().parse_args(argv))
    assert mixed_precision and args.num_processes == 8 and args.num_machines == 1
    assert (bool(args.multi_gpu), bool(args.use_fsdp), bool(args.use_deepspeed)) == {
        "ddp": (True, False, False), "fsdp": (False, True, False), "zero2": (False, False, True)
    }[name]
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    assert {k: env.get(k) for k in expected} == expected


@pytest.mark.slow
def test_distill_reads_a_preprocessed_dataset_dir(tmp_path):
    from tide_plugin.alignment.preprocess import DEMO_DATA, load_jsonl, preprocess
    from tide_plugin.offline import tokenizer

    ds, _ = preprocess(load_jsonl(DEMO_DATA)[:12], tokenizer("mistral"), tokenizer("qwen"), pipeline="cross",
                       max_length=64, teacher_max_length=96, progress=False)
    ds.save_to_disk(str(tmp_path / "data"))
    options, run = _parse(["--data", str(tmp_path / "data"), "--max_steps", "1", "--logging_steps", "1",
                           "--student_tokenizer", "offline:qwen", "--teacher_tokenizer", "offline:mistral",
                           "--output_dir", str(tmp_path / "out")])
    metrics = distill(options, run)
    assert metrics["examples"] == len(ds) and metrics["history"][0]["step"] == 1


@pytest.mark.parametrize(
    ("teacher", "concat_order", "expected"),
    [("block", None, "xt_x0"), ("wedlm", None, "x0_xt"), ("block", "x0_xt", "x0_xt"), ("wedlm", "xt_x0", "xt_x0")],
)
def test_teacher_layout_comes_from_alias_unless_given(teacher, concat_order, expected, tmp_path):
    tr = _trainer(_config(tmp_path, teacher=teacher, concat_order=concat_order, shared_vocab_size=V), n=4)
    assert tr.teacher.config.concat_order == expected
    assert tr.teacher.config.block_size == 4  # the run's block size reaches any adapter that declares one


def test_unset_shared_vocab_size_warns_for_token_objectives(tmp_path):
    with pytest.warns(UserWarning, match="shared_vocab_size is unset.*151646"):
        _trainer(_config(tmp_path, shared_vocab_size=None), n=4)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        _trainer(_config(tmp_path, shared_vocab_size=V), n=4)


def test_objective_parts_and_ce_weight_reach_the_student_gradient(tmp_path):
    """loss = ce_weight * CE + sum(parts), with gradients flowing from every term:
    linear in ce_weight (value and gradient), and with ce_weight=0 the objective
    alone still trains the student."""
    from tide_plugin.training.loss import _distill_batch

    tr = _trainer(_config(tmp_path, objective="kl+tidal", use_comp_demo=True), n=8)
    batch = _distill_batch(next(iter(tr.get_train_dataloader())))
    params = [p for p in tr.model.parameters() if p.requires_grad]

    def loss_and_grad(weight):
        tr.args.ce_weight = weight
        loss, logged = tr.distill_forward(tr.model, batch)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])
        return loss.detach(), flat, logged

    l0, g0, logged0 = loss_and_grad(0.0)
    l1, g1, _ = loss_and_grad(1.0)
    l2, g2, _ = loss_and_grad(2.0)
    assert torch.allclose(l0, logged0["kl"] + logged0["tidal"], rtol=1e-6, atol=1e-7)
    assert g0.abs().max() > 0 and torch.isfinite(g0).all(), "objective parts do not reach the student"
    ce = l1 - l0
    assert ce > 0 and torch.allclose(l2 - l1, ce, rtol=1e-5, atol=1e-6)
    assert torch.allclose(g2 - g1, g1 - g0, rtol=1e-4, atol=1e-6)
    assert (g1 - g0).abs().max() > 0, "CE does not reach the student"
