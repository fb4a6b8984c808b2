"""One distillation training step at the paper's shapes: time and peak memory,
single-view vs batched CompDemo (two views in one teacher forward) vs sequential
views.

Student: Qwen3-0.6B config (randomly initialised, BD3LM forward on x_t ⊕ x0).
Teacher: a Qwen3-MoE model of LLaDA2.0-mini's shape (16B: 20 layers, hidden 2048,
256 experts, 8 per token), bidirectional adapter, bf16; when it does not fit, the
largest layer count that does. Objective: Reverse CALM over one chunk per student
token (two teacher tokens each), the cross pipeline's shapes (student 512, teacher
1024).

    python bench/train_step.py                 # CUDA: paper shapes; CPU: small sanity shapes
    python bench/train_step.py --batch 2 --teacher-layers 20

Prints a table; ratios are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tide_plugin.batch import DistillBatch, DistillInputs
from tide_plugin.bd3lm import bd3lm_ce, block_diffusion_logits
from tide_plugin.registry import get_collator, get_objective, get_teacher
from tide_plugin.training.normalise import local_denominators, normalise, part_units


def student_model(vocab: int, hidden: int, layers: int, heads: int, kv: int, inter: int, device, dtype):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, head_dim=hidden // heads if hidden < 1024 else 128,
        tie_word_embeddings=True, max_position_embeddings=4096,
    )
    cfg._attn_implementation = "sdpa"
    with torch.device(device):
        model = Qwen3ForCausalLM(cfg).to(dtype)
    model.config._attn_implementation = "sdpa"
    return model


def teacher_model(vocab: int, hidden: int, layers: int, heads: int, kv: int, experts: int, topk: int, moe_inter: int,
                  device, dtype):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    cfg = Qwen3MoeConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * moe_inter, moe_intermediate_size=moe_inter,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv, head_dim=hidden // heads,
        num_experts=experts, num_experts_per_tok=topk, decoder_sparse_step=1, max_position_embeddings=4096,
    )
    cfg._attn_implementation = "sdpa"
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen3MoeForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    model.config._attn_implementation = "sdpa"
    return model


def make_batch(b: int, length: int, v_s: int, v_t: int, mask_s: int, mask_t: int, views: int) -> DistillBatch:
    """Cross-pipeline batch: chunk c = student token c = teacher tokens 2c, 2c+1."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, v_s - 2, (b, length), generator=g)
    labels = x0.clone()
    labels[:, : length // 8] = -100  # a prompt
    y0 = torch.randint(0, v_t - 2, (b, 2 * length), generator=g)
    chunks = torch.arange(length).expand(b, -1).clone()
    batch = DistillBatch(
        pipeline="cross", input_ids=x0, labels=labels, attention_mask=torch.ones(b, length, dtype=torch.bool),
        teacher_input_ids=y0, teacher_attention_mask=torch.ones(b, 2 * length, dtype=torch.bool),
        student_chunk_ids=chunks, teacher_chunk_ids=chunks.repeat_interleave(2, dim=1),
        num_chunks=torch.full((b,), length),
    )
    batch = get_collator("noise", mask_id=mask_s, teacher_mask_id=mask_t, seed=0)(batch)
    if views == 2:
        batch = get_collator("comp_demo", demo_ratio=0.5, seed=0)(batch)
    return batch


def measure(student, teacher, objective, batch: DistillBatch, opt, device, block: int, repeats: int) -> tuple[float, float]:
    batch = batch.to(device)
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
            if i == 1:
                torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        logits = block_diffusion_logits(student, batch.noisy_input_ids, batch.input_ids, block_size=block,
                                        attention_mask=batch.attention_mask)
        ce = bd3lm_ce(logits, batch.input_ids, masked=batch.masked, maskable=batch.labels != -100,
                      weight=batch.ce_time_weight)
        t_logits = teacher(batch)
        parts = objective(DistillInputs(batch=batch, student_logits=logits, teacher_logits=t_logits, progress=0.5))
        units = part_units(objective)  # each part is a sum over its unit: divided as the trainer does
        parts = normalise(parts, units, local_denominators(batch, set(units.values())))
        loss = ce + sum(parts.values())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        del logits, t_logits, loss
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i > 0:  # the first step warms up
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return statistics.median(times), peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--length", type=int, default=None, help="student length (teacher: twice)")
    p.add_argument("--teacher-layers", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        dtype = torch.bfloat16
        s_shape = dict(vocab=151936, hidden=1024, layers=28, heads=16, kv=8, inter=3072)  # Qwen3-0.6B
        t_shape = dict(vocab=157184, hidden=2048, heads=16, kv=4, experts=256, topk=8, moe_inter=512)  # LLaDA2.0-mini
        layers = [args.teacher_layers] if args.teacher_layers else [20, 16, 12, 8, 4]
        b, length, block = args.batch or 1, args.length or 512, 32
        print(f"GPU: {torch.cuda.get_device_name()}; paper shapes, bf16")
    else:
        print("no GPU available: running a small-shape sanity version on CPU (figures are not the paper's)")
        dtype = torch.float32
        s_shape = dict(vocab=4096, hidden=64, layers=2, heads=4, kv=2, inter=128)
        t_shape = dict(vocab=3000, hidden=64, heads=4, kv=2, experts=8, topk=2, moe_inter=32)
        layers = [args.teacher_layers or 2]
        b, length, block = args.batch or 2, args.length or 64, 32
    student = student_model(**s_shape, device=device, dtype=dtype)
    opt = torch.optim.AdamW(student.parameters(), lr=5e-5)
    teacher_net = None
    for n in layers:
        try:
            teacher_net = teacher_model(**t_shape, layers=n, device=device, dtype=dtype)
            break
        except torch.OutOfMemoryError:
            teacher_net = None
            if cuda:
                torch.cuda.empty_cache()
    if teacher_net is None:
        raise SystemExit(f"no teacher of {layers} layers fits")
    n_params = sum(p.numel() for p in teacher_net.parameters()) / 1e9
    print(f"student {sum(p.numel() for p in student.parameters()) / 1e9:.2f}B params; "
          f"teacher {n} layers, {n_params:.2f}B params; batch {b}, student length {length}, teacher {2 * length}")
    objective = get_objective("reverse_calm", temperature=2.0)
    mask_s, mask_t = s_shape["vocab"] - 1, t_shape["vocab"] - 1
    rows = []
    for label, views, sequential in (("single view", 1, False), ("CompDemo batched", 2, False),
                                     ("CompDemo sequential", 2, True)):
        teacher = get_teacher("bidirectional", model=teacher_net, mask_token_id=mask_t, sequential_views=sequential)
        batch = make_batch(b, length, s_shape["vocab"], t_shape["vocab"], mask_s, mask_t, views)
        try:
            secs, peak = measure(student, teacher, objective, batch, opt, device, block, args.repeats)
            rows.append((label, secs, peak))
        except torch.OutOfMemoryError:
            rows.append((label, float("nan"), float("inf")))
            if cuda:
                torch.cuda.empty_cache()
    base = rows[0][1]
    print(f"{'variant':<22}{'step s':>10}{'x single':>10}{'peak GiB':>10}")
    for label, secs, peak in rows:
        print(f"{label:<22}{secs:>10.3f}{secs / base:>10.2f}{peak:>10.2f}")


if __name__ == "__main__":
    main()
