"""Agent-steps per second of a SAC population against one agent trained alone, in the same run.

    python benchmarks/bench_sac.py                      # population 256 vs 1, the defaults of sac_collect.py
    python benchmarks/bench_sac.py --batch-size 256     # the report's batch size

Both go through `sac_collect.collect_group` with the same per-agent work (one update of
`--batch-size` samples per env step, after a short warm-up that is not timed). The population's
rate also gives the projected wall-clock of the full dataset (800 runs x 50k steps) when it is
collected in groups of the population's size.
"""

import os
import sys
import time
from dataclasses import dataclass

import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sac_collect as S  # noqa: E402


@dataclass
class Args:
    population: int = 256
    """agents trained together"""
    batch_size: int = 64
    """replay samples per update, per agent (sac_collect.py's default)"""
    hidden: int = 64
    """hidden width"""
    steps: int = 200
    """timed env steps (each with one update per agent)"""
    warmup: int = 64
    """untimed steps first (random actions, no updates, allocator warm-up)"""
    full_runs: int = 800
    """runs of the full dataset, for the projection"""
    full_steps: int = 50_000
    """steps per run of the full dataset, for the projection"""


def rate(args: Args, agents: int) -> float:
    """Agent-steps per second of `agents` trained together, warm-up excluded."""
    flags = S.resolve(S.Args(num_runs=agents, steps=args.warmup, group_size=agents, batch_size=args.batch_size,
                             hidden=args.hidden, learning_starts=1, progress=False, cuda=False))
    S.collect_group(flags, list(range(agents)), torch.device("cpu"), None)  # warm-up: allocator, kernels
    flags.steps = args.steps
    start = time.perf_counter()
    S.collect_group(flags, list(range(agents)), torch.device("cpu"), None)
    return agents * args.steps / (time.perf_counter() - start)


def main(args: Args) -> float:
    S.keep_freed_memory()  # as sac_collect.main does
    alone = rate(args, 1)
    population = rate(args, args.population)
    ratio = population / alone
    hours = args.full_runs * args.full_steps / population / 3600
    print(f"batch {args.batch_size}, hidden {args.hidden}, {torch.get_num_threads()} threads")
    print(f"one agent alone:        {alone:>8,.0f} agent-steps/s")
    print(f"population of {args.population:<4}:     {population:>8,.0f} agent-steps/s")
    print(f"ratio: {ratio:.1f}x (goal: >= 20x)")
    print(f"projected {args.full_runs} x {args.full_steps:,} steps: {hours:.2f} h (goal: <= 3 h)")
    return ratio


if __name__ == "__main__":
    main(tyro.cli(Args))
