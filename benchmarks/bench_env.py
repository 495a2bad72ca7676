"""Steps per second of KeyDoorVectorEnv against gymnasium's SyncVectorEnv of KeyDoorEnv, same run,
and of TorchVectorEnv (the fixed-task env sac_collect.py steps on the training device).

    python benchmarks/bench_env.py --num-envs 512
    python benchmarks/bench_env.py --num-envs 800 --device cuda

All run the same random actions with SAME_STEP autoreset; the ratio is what to read, since the
absolute figures move with the machine's load.
"""

import functools
import os
import sys
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keydoor_env as K  # noqa: E402


@dataclass
class Args:
    num_envs: int = 512
    """environments stepped together"""
    size: int = 9
    """grid size"""
    seconds: float = 3.0
    """minimum time spent measuring each implementation"""
    device: str = "cpu"
    """device of TorchVectorEnv"""


def measure(step, num_envs: int, seconds: float, device: str | None = None) -> float:
    """Env steps per second (num_envs per call) over at least `seconds`; actions as a tensor on `device`
    if given, else as a numpy array."""
    actions = np.random.default_rng(0).integers(0, K.NUM_ACTIONS, (64, num_envs))
    actions = actions if device is None else torch.as_tensor(actions, device=device)
    on_cuda = device is not None and device.startswith("cuda")
    for i in range(64):  # warm-up
        step(actions[i])
    wait_for_device(on_cuda)
    calls = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(actions[calls % 64])
        calls += 1
    wait_for_device(on_cuda)  # CUDA steps are asynchronous: time them to their end
    return calls * num_envs / (time.perf_counter() - start)


def wait_for_device(on_cuda: bool) -> None:
    if on_cuda:
        torch.cuda.synchronize()


def main(args: Args) -> float:
    vector = K.KeyDoorVectorEnv(args.num_envs, size=args.size)
    vector.reset(seed=0)
    sync = gym.vector.SyncVectorEnv(
        [functools.partial(K.KeyDoorEnv, size=args.size) for _ in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    sync.reset(seed=0)
    torch_env = K.TorchVectorEnv(vector.tasks, args.size, light=False, device=args.device)  # the tasks drawn above
    torch_env.reset()
    fast = measure(vector.step, args.num_envs, args.seconds)
    slow = measure(sync.step, args.num_envs, args.seconds)
    on_device = measure(torch_env.step, args.num_envs, args.seconds, args.device)
    print(f"KeyDoorVectorEnv   {args.num_envs} envs: {fast:>12,.0f} steps/s")
    print(f"SyncVectorEnv      {args.num_envs} envs: {slow:>12,.0f} steps/s")
    print(f"TorchVectorEnv     {args.num_envs} envs: {on_device:>12,.0f} steps/s ({args.device}, fixed tasks)")
    print(f"ratio: {fast / slow:.1f}x (goal: >= 50x)")
    return fast / slow


if __name__ == "__main__":
    K.run_cli(main, Args)
