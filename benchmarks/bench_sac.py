"""Agent-steps per second of sac_collect's collection path against the path before it, in the same run.

    python benchmarks/bench_sac.py                              # population 256 on the CPU
    python benchmarks/bench_sac.py --device cuda --population 800 --steps 2000

Three rates, each through `sac_collect.collect_group` with the same per-agent work (one update of
`--batch-size` samples per env step, after an untimed warm-up call):
- the path before the GPU work: the numpy env stepped on the host, eager updates;
- the path sac_collect.py takes: `TorchVectorEnv` on the device and, on CUDA, the update replayed
  as a CUDA graph (on the CPU only the env differs, and the data are the same bit for bit);
- one agent alone on the same path, to show what batching agents buys.
The two population paths alternate `--repeats` times and each keeps its best rate, so that a burst
of load from elsewhere does not decide the ratio; still, read the ratios, as absolute figures move
with the machine's load. The new path's rate also gives the projected wall-clock of the full dataset
(800 runs x 50k steps) in groups of the population's size. On CUDA, `--steps` should be large
enough (2,000 or more) to hide the capture.
"""

import os
import sys
import time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keydoor_env as K  # noqa: E402
import sac_collect as S  # noqa: E402


@dataclass
class Args:
    population: int = 256
    """agents trained together"""
    batch_size: int = 64
    """replay samples per update, per agent (sac_collect.py's default)"""
    hidden: int = 64
    """hidden width"""
    size: int = 9
    """grid size"""
    steps: int = 200
    """timed env steps (each with one update per agent)"""
    warmup: int = 64
    """steps of the untimed first call (allocator, kernels)"""
    device: str = "cpu"
    """cpu or cuda"""
    repeats: int = 2
    """timed calls of each population path, alternating; the best counts"""
    full_runs: int = 800
    """runs of the full dataset, for the projection"""
    full_steps: int = 50_000
    """steps per run of the full dataset, for the projection"""


def rate(args: Args, agents: int, before: bool) -> float:
    """Agent-steps per second of `agents` trained together, warm-up excluded; `before`: the path before
    the GPU work (numpy env, eager updates)."""
    device = torch.device(args.device)
    flags = S.resolve(
        S.Args(
            num_runs=agents,
            steps=args.warmup,
            group_size=agents,
            batch_size=args.batch_size,
            hidden=args.hidden,
            size=args.size,
            learning_starts=1,
            progress=False,
        )
    )
    paths = dict(numpy_env=before, graph=not before)
    S.collect_group(flags, list(range(agents)), device, None, **paths)  # warm-up: allocator, kernels
    flags.steps = args.steps
    start = time.perf_counter()
    S.collect_group(flags, list(range(agents)), device, None, **paths)  # returns host arrays: the device is done
    return agents * args.steps / (time.perf_counter() - start)


def main(args: Args) -> float:
    S.keep_freed_memory()  # as sac_collect.main does
    before = 0.0
    new = 0.0
    for _ in range(args.repeats):
        before = max(before, rate(args, args.population, before=True))
        new = max(new, rate(args, args.population, before=False))
    alone = rate(args, 1, before=False)
    hours = args.full_runs * args.full_steps / new / 3600
    now = "torch env" + (", CUDA graph" if args.device.startswith("cuda") else "")
    print(
        f"{args.device}, {args.size}x{args.size}, batch {args.batch_size}, hidden {args.hidden}, "
        f"{torch.get_num_threads()} threads"
    )
    for label, value in [
        (f"population of {args.population}, numpy env, eager (before)", before),
        (f"population of {args.population}, {now} (now)", new),
        ("one agent alone, now", alone),
    ]:
        print(f"{label:<52} {value:>10,.0f} agent-steps/s")
    print(f"ratio now / before: {new / before:.2f}x (the CPU: about 1x, same data; CUDA: no host round trip per step)")
    print(f"ratio population / alone: {new / alone:.1f}x (goal: >= 20x)")
    print(
        f"projected {args.full_runs} x {args.full_steps:,} steps: {hours * 60:.1f} min "
        f"(goal on one H100/H200 at 9x9: <= 2 min; the CPU: <= 3 h)"
    )
    return new / before


if __name__ == "__main__":
    K.run_cli(main, Args)
