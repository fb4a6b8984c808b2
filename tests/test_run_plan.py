"""A run is resolved once (tide_plugin.training.plan): the objective built and checked
once, the ids settled by one rule, the config and the model config never rewritten
after the plan, and the CLI and ``build_trainer`` reading the same plan."""

from __future__ import annotations

import dataclasses
import json

import pytest
from helpers.distill import EOS, MASK, V, synthetic_rows, tidal_comp_demo_config

from tide_plugin.tiny import tiny_qwen3, tiny_qwen3_moe
from tide_plugin.training import DistillConfig, build_trainer, plan_run
from tide_plugin.training.plan import RunPlan, resolve_mask_ids


class _Tok:
    """Just the ids a tokenizer carries (what the resolver reads)."""

    def __init__(self, mask=None, eos=None, pad=None):
        self.mask_token_id, self.eos_token_id, self.pad_token_id = mask, eos, pad


def _counting(monkeypatch, owner, name):
    calls = []
    real = getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_build_trainer_builds_and_checks_the_objective_once(tmp_path, monkeypatch):
    import tide_plugin.registry as registry
    from tide_plugin.objectives.base import Objective

    cfg = tidal_comp_demo_config(tmp_path, objective="kl+tidal")  # pipeline given: nothing implied
    kwargs_calls = _counting(monkeypatch, DistillConfig, "objective_kwargs")
    built = _counting(monkeypatch, registry, "get_objective")
    checked = _counting(monkeypatch, Objective, "check_pipeline")
    trainer = build_trainer(cfg, student=tiny_qwen3(V), teacher_model=tiny_qwen3_moe(V, seed=1),
                            train_dataset=synthetic_rows(4), student_mask_id=MASK, student_eos_id=EOS)
    assert len(kwargs_calls) == 1 and len(built) == 1
    # the plan checks once; the trainer checks what it is handed when set up (any caller's objective)
    assert len(checked) == 2 * 2  # two components, each checked by the plan and by the trainer's setup
    assert [c.name for c in trainer.objective.components] == ["kl", "tidal"]


def test_the_plan_is_frozen_and_what_it_hands_out_is_its_own(tmp_path):
    cfg = tidal_comp_demo_config(tmp_path)
    plan = plan_run(cfg).with_ids(student_mask_id=MASK, student_eos_id=EOS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.objective = None
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.context.block_size = 8
    trainer = build_trainer(plan=plan, student=tiny_qwen3(V), teacher_model=tiny_qwen3_moe(V, seed=1),
                            train_dataset=synthetic_rows(4))
    assert trainer.objective is plan.objective and trainer.pipeline_info is plan.pipeline_info
    assert trainer.args is cfg and trainer.pipeline_info.shared_vocab_size == cfg.shared_vocab_size == V
    noise = trainer.data_collator.chain.stages[1]
    assert (noise.config.mask_id, noise.config.seed) == (plan.context.student_mask_id, plan.context.seed)
    with pytest.raises(ValueError, match="a plan made from another config"):
        build_trainer(tidal_comp_demo_config(tmp_path), plan=plan, student=tiny_qwen3(V), teacher_model=None,
                      train_dataset=[])


def test_nothing_rewrites_the_config_and_the_student_config_comes_from_the_plan(tmp_path):
    from tide_plugin.offline import tokenizer

    qwen, mistral = tokenizer("qwen"), tokenizer("mistral")
    cfg = DistillConfig(output_dir=str(tmp_path), objective="reverse_calm", use_cpu=True, block_size=8)
    before = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    student = tiny_qwen3(len(qwen), hidden_size=16)
    trainer = build_trainer(cfg, student=student, teacher_model=tiny_qwen3_moe(len(mistral), hidden_size=16),
                            train_dataset=[], student_tokenizer=qwen, teacher_tokenizer=mistral)
    assert {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)} == before
    assert cfg.teacher_mask_token_id is None  # m_T is the plan's (the teacher tokenizer's), not written back
    noise = trainer.data_collator.chain.stages[1]
    assert noise.config.teacher_mask_id == mistral.mask_token_id and noise.config.mask_id == qwen.mask_token_id
    assert trainer.teacher.mask_token_id == mistral.mask_token_id
    assert (student.config.mask_token_id, student.config.block_size) == (qwen.mask_token_id, 8)


def test_one_rule_for_the_mask_ids(tmp_path):
    student, teacher = _Tok(mask=7, eos=1), _Tok(mask=9)
    rule = dict(student_tokenizer=student, teacher_tokenizer=teacher)
    assert resolve_mask_ids("cross", **rule, given_teacher_mask_id=5) == (7, 5)  # the flag wins
    assert resolve_mask_ids("same", **rule) == (7, 7)  # the teacher reads the student's ids
    assert resolve_mask_ids("shared", **rule) == (7, 9)  # the teacher tokenizer's
    assert resolve_mask_ids("cross", **rule, student_mask_id=3) == (3, 9)
    # no mask token in the teacher tokenizer: the teacher model's config, built or in its folder
    model = tiny_qwen3_moe(V, seed=1)
    model.config.mask_token_id = 11
    assert resolve_mask_ids("cross", student_tokenizer=student, teacher_tokenizer=_Tok(), teacher_model=model) == (7, 11)
    (tmp_path / "config.json").write_text(json.dumps({"mask_token_id": 12}))
    folder = str(tmp_path)
    assert resolve_mask_ids("cross", student_tokenizer=student, teacher_model=folder) == (7, 12)
    # CE only: the ids fill teacher rows nobody reads
    assert resolve_mask_ids("cross", student_tokenizer=student, teacher_model=folder, reads_teacher=False) == (7, 7)
    with pytest.raises(ValueError, match="the 'cross' pipeline needs the teacher's mask id m_T.*--teacher_mask_token_id"):
        resolve_mask_ids("cross", student_tokenizer=student, teacher_tokenizer=_Tok())
    with pytest.raises(ValueError, match=r"student mask id \(None\)"):
        resolve_mask_ids("same", student_tokenizer=_Tok(eos=1))


def test_the_plan_settles_the_teacher_adapter_and_a_ce_only_run_has_none(tmp_path):
    cfg = tidal_comp_demo_config(tmp_path, teacher="wedlm", teacher_config='{"block_padding": "blocked"}',
                                 teacher_eos_token_id=4)
    plan = plan_run(cfg).with_ids(student_mask_id=MASK, student_eos_id=EOS)
    assert plan.teacher.adapter == "wedlm" and plan.teacher.options["block_size"] == 4
    options = plan.teacher_options()
    assert options["eos_token_id"] == 4 and options["block_padding"] == "blocked"
    assert options["mask_token_id"] is None  # same: the adapter's own (its model config's)
    ce_only = plan_run(tidal_comp_demo_config(tmp_path, objective="none"))
    assert ce_only.teacher is None and not ce_only.reads_teacher and ce_only.objective_name == "none"
    assert plan_run(DistillConfig(output_dir=str(tmp_path), objective="taid_aligned", shared_vocab_size=V,
                                  use_cpu=True)).objective_name == "tidal"


def test_a_pipeline_mismatch_stops_the_plan(tmp_path):
    from tide_plugin.objectives.base import PipelineMismatchError

    with pytest.raises(PipelineMismatchError):
        plan_run(tidal_comp_demo_config(tmp_path, objective="calm"))  # chunks on the same pipeline
    assert isinstance(plan_run(tidal_comp_demo_config(tmp_path)), RunPlan)


def test_the_comparison_students_are_planned_in_the_checks(tmp_path):
    from tide_plugin.cli.distill_arms import check_arms

    config = DistillConfig(output_dir=str(tmp_path), objective="projected_kl+reverse_calm", use_cpu=True)
    plans = check_arms(config, ["none", "reverse_calm"])
    assert list(plans) == ["none", "reverse_calm"]
    assert plans["none"].teacher is None and plans["reverse_calm"].objective_name == "reverse_calm"
    assert not plans["reverse_calm"].needs_projection and plan_run(config).needs_projection
    with pytest.raises(ValueError, match="--demo_arms 'kl_aligned' cannot train beside this run"):
        check_arms(config, ["kl_aligned"])


def test_the_demo_shared_vocabulary_is_decided_before_the_config(monkeypatch):
    import tide_plugin.cli.distill_models as models
    from tide_plugin.offline import QWEN_SHARED_VOCAB_SIZE

    loaded = []
    monkeypatch.setattr(models, "load_tokenizer", lambda spec: loaded.append(spec) or ["t"] * 100)
    offline = models.RunTokenizers({"student_tokenizer": "offline:qwen"})
    assert models.demo_shared_vocab_size({"study_assets": "B"}, {}, offline) == QWEN_SHARED_VOCAB_SIZE
    assert not loaded  # the offline stand-in's shared ids are known without loading it
    shipped = models.RunTokenizers({"student_tokenizer": "/shipped/student"})
    assert models.demo_shared_vocab_size({"study_assets": "B"}, {}, shipped) == 100  # the whole vocabulary
    assert models.demo_shared_vocab_size({"study_assets": "B"}, {"shared_vocab_size": 5}, shipped) is None
    assert models.demo_shared_vocab_size({"study_assets": "A"}, {}, shipped) is None
    same = shipped.for_pipeline("same")
    assert same.teacher_spec == "/shipped/student" and same.teacher is same.student and loaded == ["/shipped/student"]


def test_build_trainer_keeps_its_keyword_api_for_scripts(tmp_path):
    """examples/dllm_distill.py and the README call ``build_trainer(config, student=..., ...)``."""
    cfg = tidal_comp_demo_config(tmp_path, objective="kl")
    trainer = build_trainer(cfg, student=tiny_qwen3(V), teacher_model=tiny_qwen3_moe(V, seed=1),
                            train_dataset=synthetic_rows(4), student_mask_id=MASK, student_eos_id=EOS)
    assert trainer.args is cfg and trainer.objective.name == "kl"
    with pytest.raises(ValueError, match="needs config= or plan="):
        build_trainer(student=tiny_qwen3(V), teacher_model=None, train_dataset=[])
