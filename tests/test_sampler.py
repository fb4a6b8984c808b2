"""The block-diffusion sampler: schedule, cache, batching, stops, and its
agreement with the training mask of docs/method.md#student-forward."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from tide_plugin.bd3lm import block_diffusion_mask, block_diffusion_position_ids, to_additive
from tide_plugin.eval.sampler import SamplingConfig, generate, transfer_schedule

VOCAB, MASK = 64, 63


def tiny_student(attn: str = "sdpa", seed: int = 0) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=512,
        initializer_range=0.2,  # diverse greedy outputs, so equality tests have teeth
        tie_word_embeddings=False,
        attn_implementation=attn,
    )
    return Qwen3ForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def student() -> Qwen3ForCausalLM:
    return tiny_student()


PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9, 10, 11], list(range(12, 29)), [30, 31, 32, 33, 34, 35, 36, 37]]


def run(model, prompts, **kw):
    kw.setdefault("mask_id", MASK)
    kw.setdefault("block_size", 8)
    kw.setdefault("max_new_tokens", 24)
    kw.setdefault("stop_token_ids", ())
    return generate(model, prompts, **kw)


def test_outputs_are_full_length_without_mask_and_keep_the_prompt(student):
    out = run(student, PROMPTS)
    assert [len(o) for o in out] == [24] * len(PROMPTS)
    assert all(MASK not in o for o in out)
    assert all(0 <= t < VOCAB for o in out for t in o)
    full = run(student, PROMPTS, include_prompt=True)
    for p, o, f in zip(PROMPTS, out, full):
        assert f == p + o


def test_mask_token_is_never_generated_even_when_the_model_prefers_it():
    model = tiny_student()
    with torch.no_grad():
        model.lm_head.weight[MASK] = model.lm_head.weight[MASK] * 0 + 5.0
        model.lm_head.weight[MASK, ::2] = -5.0
    hidden = model.model(input_ids=torch.tensor([PROMPTS[0]])).last_hidden_state
    assert (model.lm_head(hidden).argmax(-1) == MASK).any(), "the test needs a model that prefers the mask token"
    for remasking in ("low_confidence", "random"):
        out = run(model, PROMPTS, remasking=remasking, seed=0)
        assert all(MASK not in o for o in out)


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize(
    "max_new,block,steps,per_block,expected",
    [(24, 8, 24, None, 24), (24, 8, 6, None, 6), (24, 8, 3, None, 3), (20, 8, 10, None, 10), (24, 8, None, 2, 6)],
)
def test_forward_calls_equal_the_steps(student, use_cache, max_new, block, steps, per_block, expected):
    calls: list[int] = []
    out = run(
        student, PROMPTS, max_new_tokens=max_new, block_size=block, steps=steps, steps_per_block=per_block,
        use_cache=use_cache, on_forward=calls.append,
    )
    assert len(calls) == expected
    assert SamplingConfig(mask_id=MASK, block_size=block, max_new_tokens=max_new, steps=steps,
                          steps_per_block=per_block).total_steps == expected
    assert all(len(o) == max_new for o in out)


def test_cache_runs_each_clean_token_once(student):
    calls: list[int] = []
    run(student, [PROMPTS[0]], use_cache=True, steps=6, on_forward=calls.append)
    # step 1: padded prompt (8) + block; each later block: previous block + block; else the block alone
    assert calls == [16, 8, 16, 8, 16, 8]


def test_transfer_schedule_commits_every_mask():
    for n in range(1, 40):
        for s in range(1, n + 1):
            sched = transfer_schedule(n, s)
            assert len(sched) == s and sum(sched) == n and max(sched) - min(sched) <= 1 and min(sched) >= 1


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(steps=6),
        dict(remasking="random", seed=3),
        dict(temperature=1.0, seed=5),
        dict(max_new_tokens=20, steps=10),
    ],
)
def test_cache_gives_exactly_the_uncached_tokens(student, kw):
    assert run(student, PROMPTS, use_cache=True, **kw) == run(student, PROMPTS, use_cache=False, **kw)


def test_cache_equals_no_cache_under_eager_attention():
    model = tiny_student("eager")
    assert run(model, PROMPTS, use_cache=True, steps=12) == run(model, PROMPTS, use_cache=False, steps=12)
    assert run(model, PROMPTS, steps=12) == run(tiny_student("sdpa"), PROMPTS, steps=12)


def test_the_cache_goes_through_the_keyword_the_model_declares(student):
    """No deprecation warning from the model: the cache is passed as ``cache`` where
    the forward declares it (transformers 5.2x), else as ``past_key_values``; and it
    is used (the cached run calls the model with the current block only)."""
    import inspect
    import warnings

    from tide_plugin.eval.block_cache import cache_keyword

    declared = "cache" if "cache" in inspect.signature(type(student).forward).parameters else "past_key_values"
    assert cache_keyword(student) == declared

    class OldStyle(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None, **kwargs):  # transformers 4.x's keyword
            return input_ids

    assert cache_keyword(OldStyle()) == "past_key_values"
    calls: list[int] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a FutureWarning about the keyword fails the run
        cached = run(student, PROMPTS, use_cache=True, steps=12, on_forward=calls.append)
    assert cached == run(student, PROMPTS, use_cache=False, steps=12)
    assert min(calls) == 8  # the current block only: the context came from the cache


def test_a_wrong_context_changes_the_output(student):
    """The equality tests above can fail: the output depends on the clean context."""
    a = run(student, [PROMPTS[0]])
    b = run(student, [[99 % MASK] + PROMPTS[0][1:]])
    assert a != b


def test_batched_equals_one_by_one(student):
    batched = run(student, PROMPTS, steps=12)
    for p, o in zip(PROMPTS, batched):
        assert run(student, [p], steps=12) == [o]
    assert run(student, PROMPTS[::-1], steps=12) == batched[::-1]


def test_seed_determinism(student):
    a = run(student, PROMPTS, temperature=1.0, seed=11)
    assert a == run(student, PROMPTS, temperature=1.0, seed=11)
    assert a != run(student, PROMPTS, temperature=1.0, seed=12)
    g = torch.Generator().manual_seed(11)
    assert run(student, PROMPTS, temperature=1.0, generator=g) == a
    r = run(student, PROMPTS, remasking="random", seed=1)
    assert r == run(student, PROMPTS, remasking="random", seed=1)
    assert r != run(student, PROMPTS, remasking="random", seed=2)


def test_stop_token_cuts_the_row_and_ends_its_generation(student):
    full = run(student, [PROMPTS[0]], steps=24)[0]
    stop = full[10]  # a token generated in the second block
    first = full.index(stop)
    calls: list[int] = []
    out = run(student, [PROMPTS[0]], steps=24, stop_token_ids=[stop], on_forward=calls.append)[0]
    assert out == full[:first]
    assert len(calls) == 8 * (first // 8 + 1)  # stops after the block holding the stop token
    # in a batch, the stopped row leaves and the others are unchanged
    batch = run(student, PROMPTS, steps=24, stop_token_ids=[stop])
    alone = [run(student, [p], steps=24, stop_token_ids=[stop])[0] for p in PROMPTS]
    assert batch == alone


def test_default_stop_ids_come_from_the_model_config(student):
    full = run(student, [PROMPTS[0]])[0]
    saved = student.config.eos_token_id, student.generation_config.eos_token_id
    student.config.eos_token_id = full[3]
    student.generation_config.eos_token_id = full[3]
    try:
        out = generate(student, [PROMPTS[0]], mask_id=MASK, block_size=8, max_new_tokens=24)[0]
    finally:
        student.config.eos_token_id, student.generation_config.eos_token_id = saved
    assert out == full[:3]


def _training_layout_logits(model, seq: list[int], block: int) -> torch.Tensor:
    """docs/method.md#student-forward forward: input x_t ⊕ x0 (x0 = x_t with masks replaced), logits of the x_t half."""
    xt = torch.tensor([seq])
    x0 = xt.masked_fill(xt == MASK, 0)
    n = len(seq)
    mask = to_additive(block_diffusion_mask(n, block)[None, None], torch.float32)
    out = model(
        input_ids=torch.cat([xt, x0], dim=1),
        attention_mask=mask,
        position_ids=block_diffusion_position_ids(1, n),
    )
    return out.logits[0, :n]


def test_sampler_logits_match_the_training_mask(student):
    """For a prompt that fills whole blocks the sampler's layout is exactly the
    training layout: its logits for the current block equal the x_t-half logits
    of the docs/method.md#student-forward forward (block causal x0 half, offset block causal x_t half)."""
    prompt = list(range(1, 17))  # two blocks of 8
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hook = student.register_forward_hook(lambda m, a, kw, out: seen.append((kw["input_ids"].clone(), out.logits.clone())), with_kwargs=True)
    try:
        out = run(student, [prompt], steps=6, use_cache=False)[0]
    finally:
        hook.remove()
    # steps 0 (block 1 all masked) and 2 (block 2 all masked, block 1 finished)
    for step, done in ((0, []), (2, out[:8])):
        ids, logits = seen[step]
        seq = prompt + done + [MASK] * 8
        assert ids[0].tolist() == seq
        expected = _training_layout_logits(student, seq, 8)[-8:]
        torch.testing.assert_close(logits[0, -8:], expected, atol=2e-5, rtol=1e-5)


def test_validation_names_the_bad_value(student):
    with pytest.raises(ValueError, match=r"steps=5 does not spread evenly.*valid steps: \[3, 6, 9, 12, 15, 18, 21, 24\]"):
        run(student, PROMPTS, steps=5)
    with pytest.raises(ValueError, match=r"remasking 'top' is not one of"):
        run(student, PROMPTS, remasking="top")
    with pytest.raises(ValueError, match="contains the mask token id 63"):
        run(student, [[1, MASK]])
    with pytest.raises(ValueError, match="not both"):
        run(student, PROMPTS, steps=6, steps_per_block=2)
    with pytest.raises(ValueError, match=r"steps must be in \[1, max_new_tokens=24\], got 48"):
        run(student, PROMPTS, steps=48)
    with pytest.raises(ValueError, match="need a tokenizer"):
        run(student, PROMPTS, stop_strings=["\n"])
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        run(student, PROMPTS, mask_id=VOCAB)
    student.config._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(ValueError, match="'flash_attention_2' cannot take the block-diffusion mask"):
            run(student, PROMPTS)
    finally:
        student.config._attn_implementation = "sdpa"


def test_empty_prompt_and_empty_batch(student):
    assert run(student, []) == []
    # An empty prompt is allowed (its first block sees only masks: every
    # position has the same confidence up to rounding, so no equality is asserted).
    out = run(student, [[], [5]], steps=6)
    assert [len(o) for o in out] == [24, 24] and all(MASK not in o for o in out)


def test_temperature_sampling_follows_the_tempered_softmax():
    from tide_plugin.eval.sampler import _pick

    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, float("-inf")])
    n, temperature = 20000, 0.7
    g = torch.Generator().manual_seed(0)
    pred, commit = _pick(
        logits.expand(1, n, -1), torch.ones(1, n, dtype=torch.bool), n,
        remasking="low_confidence", temperature=temperature, generator=g,
    )
    assert commit.all()
    freq = torch.bincount(pred[0], minlength=5).float() / n
    torch.testing.assert_close(freq, torch.softmax(logits / temperature, -1), atol=0.015, rtol=0)
    greedy, _ = _pick(logits.expand(1, 3, -1), torch.ones(1, 3, dtype=torch.bool), 1,
                      remasking="low_confidence", temperature=0.0, generator=None)
    assert greedy.tolist() == [[0, 0, 0]]


def test_low_confidence_commits_the_most_confident_masked_positions():
    from tide_plugin.eval.sampler import _pick

    logits = torch.zeros(1, 4, 3)
    logits[0, :, 1] = torch.tensor([1.0, 4.0, 3.0, 9.0])  # confidence rises with the margin
    masked = torch.tensor([[True, True, True, False]])  # position 3 is already committed
    pred, commit = _pick(logits, masked, 2, remasking="low_confidence", temperature=0.0, generator=None)
    assert pred.tolist() == [[1, 1, 1, 1]]
    assert commit.tolist() == [[False, True, True, False]]
