"""Population-batched discrete SAC on Key-To-Door that writes one learning history per run.

    python sac_collect.py --style nx1 --light      # 800 runs x 50k steps, one fixed train task each
    python sac_collect.py --style 1xn --light      # one run of 100k steps, a new train task every reset
    python sac_collect.py --style 1xn              # the same, Dark

Hundreds of independent agents train together as one batched computation: every weight, Adam
moment, temperature and replay buffer carries a leading agent dimension and every layer is one
`torch.baddbmm`. Agents share nothing but the kernels that compute them: each agent's loss is its
own mean over its own batch, summed over agents, so its gradient is exactly what it would be alone.

Output: `data/<style>-<dark|light>/run_XXXXX.npz` (the `.npz` contract of keydoor_env.py), written
atomically when the run's group finishes. Rerunning the same command skips finished runs.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

import keydoor_env as K


@dataclass
class Args:
    style: Literal["nx1", "1xn"] = "nx1"
    """nx1: each run keeps one fixed train task; 1xn: a new train task at every reset"""
    light: bool = False
    """collect Light observations (key and door positions appended); Nx1 is collected Light and read Dark"""
    num_runs: Optional[int] = None
    """independent SAC runs (default: 800 for nx1, 1 for 1xn)"""
    steps: Optional[int] = None
    """environment steps per run (default: 50,000 for nx1, 100,000 for 1xn)"""
    size: int = 9
    """grid size"""
    seed: int = 1
    """seed of the run-to-task assignment, the networks and the sampling"""
    data_dir: str = "data"
    """the shared folder; histories go to <data_dir>/<style>-<dark|light>/"""
    group_size: int = 128
    """runs trained together as one batched population; more runs go in later groups"""
    num_shards: int = 1
    """split the groups of runs into this many disjoint shards (machines or job-array tasks)"""
    shard_index: int = 0
    """which shard this process collects, 0 .. num_shards-1"""
    hidden: int = 64
    """width of the 2 hidden layers of actor and critics"""
    lr: float = 5e-4
    """Adam learning rate of actor, critics and temperature"""
    batch_size: int = 64
    """replay samples per update, per agent (the report's code: 256; 64 is about 3x faster)"""
    gamma: float = 0.99
    """discount"""
    tau: float = 0.005
    """Polyak rate of the target critics"""
    alpha: float = 0.01
    """initial entropy temperature"""
    target_entropy_scale: float = 0.2
    """target entropy = scale * 0.98 * ln(5)"""
    learning_starts: int = 512
    """random warm-up steps before the first update"""
    update_every: int = 1
    """env steps per gradient update (raise it to slow the learner down and to run faster)"""
    exploration_bonus: float = 0.1
    """count bonus beta/sqrt(visits of the (cell, has_key) reached) added to rewards in updates only; 0: the report's plain SAC"""
    cuda: bool = True
    """use CUDA when it is available"""
    exp_name: str = "sac_collect"
    """the experiment name in the TensorBoard run name"""
    log_every: int = 1000
    """env steps between TensorBoard points"""
    progress: bool = True
    """show a progress bar"""


# Settings that change what a run writes. Files in one dataset folder must agree on all of them;
# run count, sharding, device and logging may change between invocations.
DATA_FIELDS = ("style", "light", "steps", "size", "seed", "group_size", "hidden", "lr", "batch_size", "gamma",
               "tau", "alpha", "target_entropy_scale", "learning_starts", "update_every", "exploration_bonus")


def resolve(args: Args) -> Args:
    """Fill style-dependent defaults and reject impossible flags with a clear ValueError."""
    defaults = {"nx1": (800, 50_000), "1xn": (1, 100_000)}[args.style]
    args.num_runs = defaults[0] if args.num_runs is None else args.num_runs
    args.steps = defaults[1] if args.steps is None else args.steps
    checks = [
        (args.num_runs >= 1, f"--num-runs must be >= 1, got {args.num_runs}"),
        (args.steps >= 1, f"--steps must be >= 1, got {args.steps}"),
        (args.num_shards >= 1, f"--num-shards must be >= 1, got {args.num_shards}"),
        (0 <= args.shard_index < args.num_shards,
         f"--shard-index must lie in 0..{args.num_shards - 1}, got {args.shard_index}"),
        (args.group_size >= 1, f"--group-size must be >= 1, got {args.group_size}"),
        (args.batch_size >= 1 and args.hidden >= 1 and args.update_every >= 1,
         "--batch-size, --hidden and --update-every must be >= 1"),
        (args.learning_starts >= 1, f"--learning-starts must be >= 1, got {args.learning_starts}"),
        (args.log_every >= 1, f"--log-every must be >= 1, got {args.log_every}"),
        (args.alpha > 0 and args.lr > 0, f"--alpha and --lr must be > 0, got {args.alpha} and {args.lr}"),
        (0 <= args.gamma <= 1 and 0 < args.tau <= 1, "--gamma must lie in [0, 1] and --tau in (0, 1]"),
        (args.exploration_bonus >= 0, f"--exploration-bonus must be >= 0, got {args.exploration_bonus}"),
        (3 <= args.size <= 13, f"--size must lie in 3..13 (compact replay codes), got {args.size}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    return args


# ----------------------------------------------------------------------------------------------
# Compact codes: an observation is (cell, has_key, t) and a task is (key cell, door cell), so a
# transition fits in 10 bytes instead of 80 (800 agents x 50k steps: 400 MB rather than 3.2 GB).
# ----------------------------------------------------------------------------------------------
class Codec:
    """Encodes float observations as int16 state codes and decodes codes back through tables."""

    def __init__(self, size: int, light: bool, device: torch.device):
        self.size, self.light = size, light
        cells = size * size
        states = np.arange(cells * 2 * (K.EPISODE_STEPS + 1))
        t, rest = states % (K.EPISODE_STEPS + 1), states // (K.EPISODE_STEPS + 1)
        has_key, cell = rest % 2, rest // 2
        # (states, 4): the Dark observation of every state code
        self.state_table = np.stack([cell // size / (size - 1), cell % size / (size - 1), has_key,
                                     t / K.EPISODE_STEPS], axis=1).astype(np.float32)
        tasks = np.arange(cells * cells)
        key, door = tasks // cells, tasks % cells
        # (task codes, 4) in grid cells
        self.task_cells = np.stack([key // size, key % size, door // size, door % size], axis=1)
        self.state_table_t = torch.as_tensor(self.state_table, device=device)
        self.task_table_t = torch.as_tensor((self.task_cells / (size - 1)).astype(np.float32), device=device)

    def encode_states(self, observations: np.ndarray) -> np.ndarray:
        scaled = np.rint(observations[:, :4] * [self.size - 1, self.size - 1, 1, K.EPISODE_STEPS]).astype(np.int64)
        cell = scaled[:, 0] * self.size + scaled[:, 1]
        return ((cell * 2 + scaled[:, 2]) * (K.EPISODE_STEPS + 1) + scaled[:, 3]).astype(np.int16)

    def encode_tasks(self, tasks: np.ndarray) -> np.ndarray:
        cells = self.size * self.size
        return ((tasks[:, 0] * self.size + tasks[:, 1]) * cells + tasks[:, 2] * self.size + tasks[:, 3]).astype(np.int16)

    def observations(self, state_codes: torch.Tensor, task_codes: torch.Tensor) -> torch.Tensor:
        """Float observations (..., obs_dim) of code tensors (...)."""
        dark = self.state_table_t[state_codes.long()]
        return torch.cat([dark, self.task_table_t[task_codes.long()]], dim=-1) if self.light else dark


# ----------------------------------------------------------------------------------------------
# The population: A independent discrete-SAC agents as batched tensors
# ----------------------------------------------------------------------------------------------
def init_mlp(num: int, sizes: list[int], generator: torch.Generator, device: torch.device) -> list[torch.Tensor]:
    """`num` independent MLPs as [W1 (num, in, out), b1 (num, 1, out), ...], nn.Linear's default init."""
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = 1.0 / math.sqrt(fan_in)
        for shape in ((num, fan_in, fan_out), (num, 1, fan_out)):
            tensor = (torch.rand(shape, generator=generator) * 2 - 1) * bound
            params.append(tensor.to(device).requires_grad_(True))
    return params


def mlp(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Batched MLP: x (num, B, in) -> (num, B, out), ReLU between layers."""
    for i in range(0, len(params), 2):
        x = torch.baddbmm(params[i + 1], x, params[i])
        if i + 2 < len(params):
            x = torch.relu_(x)  # in place: baddbmm's backward does not need its output
    return x


class Population:
    """`num_agents` discrete-SAC agents whose every tensor has a leading agent dimension.

    Actor: (A, ...) MLP obs -> 5 logits. Critics: the twin Q networks stacked as 2A MLPs, rows
    [0, A) the first critic of each agent and [A, 2A) the second, with target copies.
    """

    def __init__(self, num_agents: int, obs_dim: int, args: Args, generator: torch.Generator, device: torch.device):
        self.num_agents, self.args = num_agents, args
        sizes = [obs_dim, args.hidden, args.hidden, K.NUM_ACTIONS]
        self.actor = init_mlp(num_agents, sizes, generator, device)
        self.critic = init_mlp(2 * num_agents, sizes, generator, device)
        self.critic_target = [p.detach().clone() for p in self.critic]
        self.log_alpha = torch.full((num_agents,), math.log(args.alpha), device=device, requires_grad=True)
        self.target_entropy = args.target_entropy_scale * 0.98 * math.log(K.NUM_ACTIONS)
        params = self.actor + self.critic + [self.log_alpha]
        # Adam is elementwise, so one optimizer over the stacked tensors is A independent optimizers.
        self.optimizer = torch.optim.Adam(params, lr=args.lr, fused=True)  # one kernel per tensor, CPU or CUDA

    @torch.no_grad()
    def act(self, observations: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        """Sample one action per agent: observations (A, obs_dim), uniforms (A,) in [0, 1) -> (A,)."""
        probs = torch.softmax(mlp(self.actor, observations[:, None, :])[:, 0], dim=-1)  # (A, 5)
        # inverse-CDF sampling from per-agent uniforms keeps each agent's randomness its own
        return (probs.cumsum(-1) < uniforms[:, None]).sum(-1).clamp_(max=K.NUM_ACTIONS - 1)

    def update(self, observations, actions, rewards, next_observations, dones) -> dict[str, torch.Tensor]:
        """One SAC update of every agent on its own batch.

        observations, next_observations (A, B, obs_dim); actions (A, B) int64; rewards, dones (A, B).
        Returns the per-agent losses (A,), detached.
        """
        A, gamma = self.num_agents, self.args.gamma
        alpha = self.log_alpha.exp().detach()[:, None, None]  # (A, 1, 1)
        with torch.no_grad():
            next_logp = torch.log_softmax(mlp(self.actor, next_observations), dim=-1)  # (A, B, 5)
            next_q = mlp(self.critic_target, next_observations.repeat(2, 1, 1))  # (2A, B, 5)
            next_q = torch.minimum(next_q[:A], next_q[A:])
            next_v = (next_logp.exp() * (next_q - alpha * next_logp)).sum(-1)  # (A, B)
            target = rewards + gamma * (1.0 - dones) * next_v  # (A, B)
        q = mlp(self.critic, observations.repeat(2, 1, 1))  # (2A, B, 5)
        q_taken = q.gather(-1, actions.repeat(2, 1)[..., None])[..., 0]  # (2A, B)
        qf_loss = ((q_taken - target.repeat(2, 1)) ** 2).mean(1)  # (2A,)
        qf_loss = qf_loss[:A] + qf_loss[A:]  # (A,)
        # The actor uses the critics' Q from before this update (detached): one forward fewer.
        min_q = torch.minimum(q[:A], q[A:]).detach()  # (A, B, 5)
        logp = torch.log_softmax(mlp(self.actor, observations), dim=-1)  # (A, B, 5)
        probs = logp.exp()
        actor_loss = (probs * (alpha * logp - min_q)).sum(-1).mean(1)  # (A,)
        entropy = -(probs * logp).sum(-1).detach()  # (A, B)
        alpha_loss = (self.log_alpha[:, None] * (entropy - self.target_entropy)).mean(1)  # (A,)
        # Sum over agents, never mean: each agent's gradient is then exactly its own loss's.
        self.optimizer.zero_grad(set_to_none=True)
        (qf_loss.sum() + actor_loss.sum() + alpha_loss.sum()).backward()
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.critic_target, [p.detach() for p in self.critic], self.args.tau)
        return {"qf_loss": qf_loss.detach(), "actor_loss": actor_loss.detach(), "alpha_loss": alpha_loss.detach(),
                "entropy": entropy.mean(1)}


# ----------------------------------------------------------------------------------------------
# Collecting one group of runs
# ----------------------------------------------------------------------------------------------
def run_tasks(args: Args) -> np.ndarray:
    """The fixed train task of every Nx1 run, (num_runs, 4): a seeded permutation of the train split."""
    train = K.task_split(args.size)[0]
    order = np.random.default_rng(args.seed).permutation(len(train))
    return train[order[np.arange(args.num_runs) % len(train)]]


def collect_group(args: Args, runs: list[int], device: torch.device, writer: SummaryWriter | None,
                  position: int = 0) -> list[dict[str, np.ndarray]]:
    """Train the runs of one group together for `args.steps` steps; return their histories."""
    A, T, B = len(runs), args.steps, args.batch_size
    generator = torch.Generator().manual_seed(args.seed * 1_000_003 + runs[0])
    codec = Codec(args.size, args.light, device)
    obs_dim = K.LIGHT_OBS_DIM if args.light else K.DARK_OBS_DIM
    agents = Population(A, obs_dim, args, generator, device)
    if args.style == "nx1":
        env = K.KeyDoorVectorEnv(A, size=args.size, light=args.light, tasks=run_tasks(args)[runs])
    else:
        env = K.KeyDoorVectorEnv(A, size=args.size, light=args.light, resample=True)
    observations, _ = env.reset(seed=[args.seed * 1_000_003 + r for r in runs])

    # The history doubles as the replay buffer: (A, T) compact codes, on the training device.
    states = torch.zeros((A, T), dtype=torch.int16, device=device)
    next_states = torch.zeros((A, T), dtype=torch.int16, device=device)
    task_codes = torch.zeros((A, T), dtype=torch.int16, device=device)
    actions = torch.zeros((A, T), dtype=torch.uint8, device=device)
    rewards = torch.zeros((A, T), dtype=torch.uint8, device=device)
    terminations = torch.zeros((A, T), dtype=torch.bool, device=device)
    truncations = torch.zeros((A, T), dtype=torch.bool, device=device)
    agent_rows = torch.arange(A, device=device)[:, None] * T  # (A, 1) offsets into flattened (A*T) buffers
    # visits of each (cell, has_key) by each agent, for the exploration bonus
    visit_slots = 2 * args.size * args.size
    visits = torch.zeros((A, visit_slots), device=device)

    episode_return = np.zeros(A)
    window_returns: list[list[float]] = [[] for _ in range(A)]
    losses: dict[str, torch.Tensor] = {}
    start_time, last_log = time.time(), 0
    bar = tqdm(total=T, desc=f"runs {runs[0]}..{runs[-1]}", unit="step", disable=not args.progress,
               position=position, dynamic_ncols=True)
    for step in range(T):
        task_code = codec.encode_tasks(env.tasks)
        state_code = codec.encode_states(observations)
        if step < args.learning_starts:
            action = torch.randint(0, K.NUM_ACTIONS, (A,), generator=generator).to(device)
        else:
            obs_t = codec.observations(torch.as_tensor(state_code, device=device), torch.as_tensor(task_code, device=device))
            action = agents.act(obs_t, torch.rand((A,), generator=generator).to(device))
        action_np = action.cpu().numpy()
        observations, reward, terminated, truncated, infos = env.step(action_np)
        final = np.where(infos["_final_obs"][:, None], infos["final_obs"], observations) if infos else observations
        next_code = torch.as_tensor(codec.encode_states(final), device=device)
        states[:, step] = torch.as_tensor(state_code, device=device)
        next_states[:, step] = next_code
        visits.view(-1).index_add_(0, torch.arange(A, device=device) * visit_slots
                                   + next_code.long() // (K.EPISODE_STEPS + 1), torch.ones(A, device=device))
        task_codes[:, step] = torch.as_tensor(task_code, device=device)
        actions[:, step] = action.to(torch.uint8)
        rewards[:, step] = torch.as_tensor(reward, device=device).to(torch.uint8)
        terminations[:, step] = torch.as_tensor(terminated, device=device)
        truncations[:, step] = torch.as_tensor(truncated, device=device)

        episode_return += reward
        for i in np.flatnonzero(terminated | truncated):
            window_returns[i].append(episode_return[i])
            episode_return[i] = 0.0

        if step + 1 >= args.learning_starts and (step + 1) % args.update_every == 0:
            filled = step + 1
            index = (agent_rows + torch.randint(0, filled, (A, B), generator=generator).to(device)).view(-1)  # (A*B,)
            task_batch = task_codes.view(-1)[index]
            obs_batch = codec.observations(states.view(-1)[index], task_batch).view(A, B, obs_dim)
            next_obs_batch = codec.observations(next_states.view(-1)[index], task_batch).view(A, B, obs_dim)
            # Step 50 is terminal too: time is observed, so the horizon is part of the state.
            done_batch = (terminations.view(-1)[index] | truncations.view(-1)[index]).float().view(A, B)
            reward_batch = rewards.view(-1)[index].float().view(A, B)
            if args.exploration_bonus > 0:
                slot = next_states.view(-1)[index].long().view(A, B) // (K.EPISODE_STEPS + 1)  # (A, B)
                reward_batch = reward_batch + args.exploration_bonus * visits.gather(1, slot).rsqrt()
            losses = agents.update(obs_batch, actions.view(-1)[index].long().view(A, B), reward_batch,
                                   next_obs_batch, done_batch)

        if (step + 1) % args.log_every == 0 or step + 1 == T:
            means = np.array([np.mean(r) if r else np.nan for r in window_returns])
            if writer is not None and not np.isnan(means).all():
                log_population(writer, step + 1, means, losses, agents, A * (step + 1 - last_log) / (time.time() - start_time))
            bar.set_postfix(ret=f"{np.nanmean(means):.2f}" if not np.isnan(means).all() else "-")
            window_returns = [[] for _ in range(A)]
            start_time, last_log = time.time(), step + 1
        bar.update(1)
    bar.close()

    histories = []
    for i in range(A):
        tasks = codec.task_cells[task_codes[i].long().cpu().numpy()]
        obs = codec.observations(states[i], task_codes[i]).cpu().numpy()
        histories.append({"observations": obs, "actions": actions[i].cpu().numpy().astype(np.int64),
                          "rewards": rewards[i].cpu().numpy().astype(np.float32),
                          "terminations": terminations[i].cpu().numpy(), "truncations": truncations[i].cpu().numpy(),
                          "tasks": tasks.astype(np.int64)})
    return histories


def log_population(writer, step, means, losses, agents, sps) -> None:
    """The population's learning curve (the report's Figure 2) plus losses, temperature and speed."""
    valid = means[~np.isnan(means)]
    writer.add_scalar("charts/episodic_return_mean", valid.mean(), step)
    for q in (10, 25, 50, 75, 90):
        writer.add_scalar(f"charts/episodic_return_p{q}", np.percentile(valid, q), step)
    writer.add_scalar("charts/solved_fraction", (valid >= 1.8).mean(), step)
    writer.add_scalar("charts/SPS", sps, step)
    writer.add_scalar("losses/alpha", agents.log_alpha.exp().mean().item(), step)
    for name, value in losses.items():
        writer.add_scalar(f"losses/{name}", value.mean().item(), step)


# ----------------------------------------------------------------------------------------------
# Dataset folder: configuration checks, resume, summary
# ----------------------------------------------------------------------------------------------
def dataset_dir(args: Args) -> str:
    return os.path.join(args.data_dir, f"{args.style}-{'light' if args.light else 'dark'}")


def run_path(folder: str, run: int) -> str:
    return os.path.join(folder, f"run_{run:05d}.npz")


def check_folder(folder: str, config: dict) -> None:
    """Refuse a folder whose existing histories were written with other data settings."""
    if not os.path.isdir(folder):
        return
    for name in sorted(os.listdir(folder)):
        if not (name.startswith("run_") and name.endswith(".npz")):
            continue
        path = os.path.join(folder, name)
        try:
            with np.load(path, allow_pickle=False) as data:
                existing = json.loads(str(data["config"]))
        except Exception as e:
            raise ValueError(f"{path}: unreadable history ({type(e).__name__}); move it away or delete it") from None
        for field in DATA_FIELDS:
            if existing.get(field) != config[field]:
                raise ValueError(f"{folder} holds runs with {field}={existing.get(field)!r}, this command has "
                                 f"{field}={config[field]!r}; use another --data-dir or matching flags")
        return  # one file checked: every file in the folder was written by this same check


def summarize(folder: str) -> dict:
    """Share of runs whose last 10 episodes average >= 1.8, and when the median run first got there."""
    names = sorted(n for n in os.listdir(folder) if n.startswith("run_") and n.endswith(".npz"))
    final, solved_at = [], []
    for name in names:
        history, _ = K.load_history(os.path.join(folder, name))
        dones = history["terminations"] | history["truncations"]
        returns, _ = K.episode_returns(history["rewards"], dones)
        final.append(returns[-10:].mean() if len(returns) else 0.0)
        solved = K.first_solved_step(history["rewards"], dones)
        solved_at.append(np.inf if solved is None else solved)
    final, solved_at = np.array(final), np.array(solved_at)
    median = float(np.median(solved_at)) if len(solved_at) else np.inf
    return {"runs": len(names), "solved_fraction": float((final >= 1.8).mean()) if len(final) else 0.0,
            "final_return_mean": float(final.mean()) if len(final) else 0.0,
            "median_first_solved_step": None if not np.isfinite(median) else int(median)}


def keep_freed_memory() -> None:
    """Ask glibc to recycle freed activations instead of returning them to the OS.

    Each update allocates and frees many tensors of a few MB. By default glibc serves those from
    fresh mmap pages, and the page faults on first touch cost about 20% of an update on CPU.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD: the largest value glibc accepts
        libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def main(args: Args) -> dict:
    args = resolve(args)
    keep_freed_memory()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    folder = dataset_dir(args)
    config = {field: getattr(args, field) for field in DATA_FIELDS}
    config["algorithm"] = "sac"
    check_folder(folder, config)
    os.makedirs(folder, exist_ok=True)

    # Groups are laid out over the global run index and dealt to shards, so that a run's data
    # depends only on the seed and its group, never on the number of shards.
    all_groups = [list(range(i, min(i + args.group_size, args.num_runs))) for i in range(0, args.num_runs, args.group_size)]
    groups = all_groups[args.shard_index::args.num_shards]
    todo = [g for g in groups if not all(os.path.exists(run_path(folder, r)) for r in g)]
    print(f"{folder}: {sum(map(len, groups))} runs in this shard, {len(groups) - len(todo)} of {len(groups)} groups "
          f"already written; device {device}")

    run_name = f"KeyDoor-{'Light' if args.light else 'Dark'}-{args.size}x{args.size}__{args.exp_name}__{args.seed}__{int(time.time())}"
    for group_index, runs in enumerate(todo):
        writer = SummaryWriter(os.path.join("runs", run_name, f"runs_{runs[0]:05d}-{runs[-1]:05d}"))
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items()))
        histories = collect_group(args, runs, device, writer)
        writer.close()
        for run, history in zip(runs, histories):
            path = run_path(folder, run)
            if not os.path.exists(path):  # a group cut short while writing left some: same seed, same data
                K.save_history(path, history, dict(config, run=run, task=history["tasks"][0].tolist()))
    summary = summarize(folder)
    print(json.dumps({"dataset": folder, **summary}))
    return summary


if __name__ == "__main__":
    K.run_cli(main, Args)
