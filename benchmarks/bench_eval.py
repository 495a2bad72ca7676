"""In-context evaluation: the KV-cache path against full recompute, timed in the same run.

    python benchmarks/bench_eval.py                  # context 300, 20 envs, the default model size

Both paths roll out the same randomly initialised model (speed does not depend on the weights)
for `--steps` env steps; the fast path's rate also gives the projected time of the full protocol
(20 envs x 17,500 steps).
"""

import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ad_eval as E  # noqa: E402
import ad_train as A  # noqa: E402
import keydoor_env as K  # noqa: E402


@dataclass
class Args:
    context: int = 300
    """model context"""
    num_envs: int = 20
    """envs evaluated together"""
    steps: int = 600
    """timed env steps per path (at least 2 contexts, so the cache refills)"""
    full_steps: int = 17_500
    """steps of the full protocol, for the projection"""


def main(args: Args) -> float:
    torch.manual_seed(0)
    model = A.DecisionModel(A.ModelConfig(obs_dim=4, context=args.context)).eval()
    tasks = K.task_split(9)[1][: args.num_envs]
    rates = {}
    for full in (False, True):
        start = time.perf_counter()
        E.rollout(model, tasks, args.steps, 9, seed=0, greedy=False, full_recompute=full, device=torch.device("cpu"))
        rates[full] = args.steps / (time.perf_counter() - start)
    ratio = rates[False] / rates[True]
    print(f"context {args.context}, {args.num_envs} envs, {torch.get_num_threads()} threads")
    print(f"KV cache:       {rates[False]:>8.1f} steps/s")
    print(f"full recompute: {rates[True]:>8.1f} steps/s")
    print(f"ratio: {ratio:.1f}x (goal: >= 20x)")
    print(f"projected {args.num_envs} x {args.full_steps:,} evaluation: {args.full_steps / rates[False]:.0f} s with the "
          f"KV cache (goal: < 120 s), {args.full_steps / rates[True]:.0f} s with full recompute")
    return ratio


if __name__ == "__main__":
    main(tyro.cli(Args))
