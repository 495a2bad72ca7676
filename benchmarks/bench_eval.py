"""In-context evaluation (`ad_train.rollout`): the KV-cache path against full recompute, timed in the same run.

    python benchmarks/bench_eval.py                  # context 300, 20 envs, the default model size
    python benchmarks/bench_eval.py --num-envs 612 --context 500   # every 9x9 test task (on a GPU)

Both paths roll out the same randomly initialised model of ad_train.py's default size (speed does not depend on
the weights) on `--num-envs` test tasks in one batch, for `--steps` env steps. The KV cache's rate also gives the
time of the full protocol, `--full-steps` steps of the same batch, projected from the timed steps: linear in steps,
since a rollout's cost per step repeats with every refilled window (time at least two windows); never in envs, since
a batched rollout's time does not grow linearly with its batch (time the batch you mean to run).
"""

import os
import sys
import time
from dataclasses import dataclass, fields

import torch

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


def validate(args: Args) -> None:
    """Each flag on its own (--num-envs is checked by `K.eval_tasks` against the test split)."""
    if args.context < 1:
        raise ValueError(f"--context must be >= 1, got {args.context}")
    if args.steps < 2 * args.context:
        raise ValueError(f"--steps must be at least 2 x --context ({2 * args.context}), so the cache refills")
    if args.full_steps < 1:
        raise ValueError(f"--full-steps must be >= 1, got {args.full_steps}")


def main(args: Args) -> float:
    validate(args)
    tasks = K.eval_tasks(9, "test", args.num_envs, seed=0)  # (num_envs, 4)
    torch.manual_seed(0)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    # ad_train.py's default model sizes, read from its Args by field name as ad_train.py builds it (plain Dark tokens)
    defaults = A.Args()
    sizes = {f.name: getattr(defaults, f.name) for f in fields(A.ModelConfig) if hasattr(defaults, f.name)}
    sizes["context"] = args.context
    config = A.ModelConfig(obs_dim=K.DARK_OBS_DIM, arrival=False, **sizes)
    model = A.DecisionModel(config).to(device).eval()
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
        f"projected {args.num_envs} envs x {args.full_steps:,} steps from the {args.steps} timed: "
        f"{args.full_steps / rates[False]:.0f} s with the KV cache (goal: < 120 s), "
        f"{args.full_steps / rates[True]:.0f} s with full recompute"
    )
    return ratio


if __name__ == "__main__":
    K.run_cli(main, Args)
