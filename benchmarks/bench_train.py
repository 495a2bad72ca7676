"""AD training throughput: tokens per second and model FLOP utilisation (MFU) against the measured
matrix-multiply peak of the same machine, in the same run.

    python benchmarks/bench_train.py                     # default model (128 wide, 4 layers), context 50
    python benchmarks/bench_train.py --context 200 --n-embd 64 --d-ff 256
    python benchmarks/bench_train.py --context 250 --n-embd 64 --n-layer 3 --d-ff 256 --batch-size 32 --compile
    python benchmarks/bench_train.py --context 250 --n-embd 64 --n-layer 3 --d-ff 256 --batch-size 32 --bf16
    python benchmarks/bench_train.py --context 250 --n-embd 64 --n-layer 3 --d-ff 256 --batch-size 32 --fused-attention

With --compile it times the eager step (the baseline), then the same step through torch.compile (as
`ad_train.py --compile` runs it), in the same process, and prints their ratio and the compile time.
With --bf16 it times the float32 step, then the same step under bfloat16 autocast on the CPU (as
`ad_train.py` runs it on CUDA; on a CPU with AMX the matrix multiplies run in bfloat16), and prints
their ratio. With --fused-attention it times the step (dropout 0.1 on the attention weights too, as
`ad_train.py` trains by default), then the same step without dropout on the attention weights
(`ad_train.py --attn-dropout 0`), which PyTorch runs on the CPU in its fused flash-attention kernel,
and prints their ratio.

FLOPs per token follow the PaLM/nanoGPT estimate: 6 x (non-embedding parameters) for the matrix
multiplies of forward and backward, plus 12 x layers x width x context for attention (half of it
under the causal mask is counted, as flash attention skips it: 6 x ...). The peak is the rate of
a large float32 matrix multiply on the same threads, measured just before.
"""

import os
import sys
import time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ad_train as A  # noqa: E402
import keydoor_env as K  # noqa: E402


@dataclass
class Args:
    context: int = 50
    """window length"""
    batch_size: int = 64
    """windows per iteration"""
    n_layer: int = 4
    """blocks"""
    n_head: int = 4
    """heads"""
    n_embd: int = 128
    """width"""
    d_ff: int = 768
    """feed-forward width"""
    iterations: int = 20
    """timed training iterations"""
    compile: bool = False
    """also time the step through torch.compile and print compiled / eager"""
    bf16: bool = False
    """also time the step under bfloat16 autocast and print bf16 / float32"""
    fused_attention: bool = False
    """also time the step with no dropout on the attention weights (--attn-dropout 0) and print fused / unfused"""


def matmul_peak(seconds: float = 2.0, n: int = 1024) -> float:
    """float32 FLOP/s of an n x n x n matrix multiply."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    for _ in range(3):
        a @ b
    count = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start)


def main(args: Args) -> float:
    peak = matmul_peak()
    torch.manual_seed(0)
    config = A.ModelConfig(
        obs_dim=4,
        context=args.context,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        d_ff=args.d_ff,
        dropout=0.1,
        arrival=False,
    )
    model = A.DecisionModel(config)
    optimizer = model.optimizer(3e-4, 0.1, torch.device("cpu"))
    B = args.batch_size
    T = args.context
    inputs = {
        "observations": torch.rand(B, T, 4),
        "prev_actions": torch.randint(0, 5, (B, T)),
        "prev_rewards": torch.randint(0, 2, (B, T)).float(),
        "prev_dones": torch.zeros(B, T),
    }
    targets = torch.randint(0, K.NUM_ACTIONS, (B, T))

    float32 = torch.autocast("cpu", enabled=False)

    def update(step_model: torch.nn.Module, autocast) -> None:  # the body of ad_train.main's loop
        loss, _ = A.loss_and_accuracy(step_model, inputs, targets, autocast)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def tokens_per_second_of(step_model: torch.nn.Module, autocast=float32) -> float:
        for _ in range(3):  # warm-up (the compiled model compiles here)
            update(step_model, autocast)
        start = time.perf_counter()
        for _ in range(args.iterations):
            update(step_model, autocast)
        return args.iterations * B * T / (time.perf_counter() - start)

    tokens_per_second = tokens_per_second_of(model)
    params = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("pos."))
    flops_per_token = 6 * params + 6 * args.n_layer * args.n_embd * args.context
    mfu = tokens_per_second * flops_per_token / peak
    print(f"model {params:,} parameters, context {T}, batch {B}, {torch.get_num_threads()} threads")
    print(f"matmul peak:       {peak / 1e9:8.1f} GFLOP/s (float32, 1024^3)")
    print(f"training:          {tokens_per_second:8,.0f} tokens/s, {tokens_per_second / (B * T):.2f} iterations/s")
    print(f"model FLOPs:       {tokens_per_second * flops_per_token / 1e9:8.1f} GFLOP/s")
    print(f"MFU: {100 * mfu:.1f}% of the matmul peak (goal: >= 40%)")
    if args.compile:
        start = time.perf_counter()
        compiled = torch.compile(model, dynamic=False)  # as ad_train.training_model compiles it on the CPU
        update(compiled, float32)  # the first call compiles forward and backward
        compile_seconds = time.perf_counter() - start
        compiled_tokens_per_second = tokens_per_second_of(compiled)
        ratio = compiled_tokens_per_second / tokens_per_second
        print(
            f"compiled:          {compiled_tokens_per_second:8,.0f} tokens/s after {compile_seconds:.0f} s of compiling"
        )
        print(f"compiled / eager:  {ratio:.2f}x (same run)")
    if args.bf16:
        bf16_tokens_per_second = tokens_per_second_of(model, torch.autocast("cpu", dtype=torch.bfloat16))
        print(f"bf16 autocast:     {bf16_tokens_per_second:8,.0f} tokens/s")
        print(f"bf16 / float32:    {bf16_tokens_per_second / tokens_per_second:.2f}x (same run)")
    if args.fused_attention:
        for block in model.blocks:  # what `--attn-dropout 0` builds: SDPA gets dropout_p 0, nothing else changes
            block.attn.attn_dropout = 0.0
        fused_tokens_per_second = tokens_per_second_of(model)
        print(f"--attn-dropout 0:  {fused_tokens_per_second:8,.0f} tokens/s")
        print(f"fused / unfused:   {fused_tokens_per_second / tokens_per_second:.2f}x (same run)")
    return mfu


if __name__ == "__main__":
    K.run_cli(main, Args)
