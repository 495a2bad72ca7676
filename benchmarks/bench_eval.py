"""In-context evaluation (`ad_train.rollout`): the KV-cache path against full recompute, timed in the same run.

    python benchmarks/bench_eval.py                  # context 300, 20 envs, the default model size
    python benchmarks/bench_eval.py --num-envs 612 --context 500   # every 9x9 test task (on a GPU)

Both paths roll out the same randomly initialised model (speed does not depend on the weights)
for `--steps` env steps; the fast path's rate also gives the projected time of the full protocol
(`--num-envs` envs x 17,500 steps).
"""

import os
import sys
import time
from dataclasses import dataclass

import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ad_train as A  # noqa: E402
import keydoor_env as K  # noqa: E402


@dataclass
class Args:
    context: int = 300
    """model context"""
    num_envs: int = 20
    """test tasks evaluated together (9x9: at most 612)"""
    steps: int = 600
    """timed env steps per path (at least 2 contexts, so the cache refills)"""
    full_steps: int = 17_500
    """steps of the full protocol, for the projection"""
    cuda: bool = True
    """use CUDA when available"""


def main(args: Args) -> float:
    torch.manual_seed(0)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    config = A.ModelConfig(
        obs_dim=4, context=args.context, n_layer=4, n_head=4, n_embd=128, d_ff=768, dropout=0.0, arrival=False
    )  # ad_train's default size
    model = A.DecisionModel(config).to(device).eval()
    tasks = K.eval_tasks(9, "test", args.num_envs, seed=0)
    A.rollout(model, tasks, 8, 9, 0, device)  # untimed: the first calls pay the allocator's and libraries' start-up
    rates = {}
    for full in (False, True):
        start = time.perf_counter()
        A.rollout(model, tasks, args.steps, 9, 0, device, full_recompute=full)  # returns after a copy to the host
        rates[full] = args.steps / (time.perf_counter() - start)
    ratio = rates[False] / rates[True]
    print(f"context {args.context}, {args.num_envs} envs, {device}, {torch.get_num_threads()} threads")
    print(f"KV cache:       {rates[False]:>8.1f} steps/s")
    print(f"full recompute: {rates[True]:>8.1f} steps/s")
    print(f"ratio: {ratio:.1f}x (goal: >= 20x)")
    print(
        f"projected {args.num_envs} x {args.full_steps:,} evaluation: {args.full_steps / rates[False]:.0f} s with the "
        f"KV cache (goal: < 120 s), {args.full_steps / rates[True]:.0f} s with full recompute"
    )
    return ratio


if __name__ == "__main__":
    main(tyro.cli(Args))
