"""Population-batched discrete SAC on Key-To-Door that writes one learning history per run.

    python sac_collect.py --style nx1 --light      # 800 runs x 50k steps, one fixed train task each
    python sac_collect.py --style 1xn --light      # one run of 100k steps, a new train task every reset
    python sac_collect.py --style 1xn              # the same, Dark

Hundreds of independent agents train together as one batched computation: every weight, Adam
moment, temperature and replay buffer carries a leading agent dimension and every layer is one
`torch.baddbmm`. Agents share nothing but the kernels that compute them: each agent's loss is its
own mean over its own batch, summed over agents, so its gradient is exactly what it would be alone.
On CUDA no env step goes through the host: Nx1 steps `K.TorchVectorEnv` on the device (1xn keeps the
numpy env, whose per-env generators draw its tasks) and the update is one replayed CUDA graph.

Output: `data/<style>-<dark|light>/run_XXXXX.npz` (the `.npz` contract of keydoor_env.py), written
atomically when the run's group finishes. Rerunning the same command skips finished runs. Before any
work, every file already in the folder must be readable and of this command's data settings.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

import keydoor_env as K


@dataclass
class Args:
    style: Literal["nx1", "1xn"] = "nx1"
    """nx1: each run keeps one fixed train task; 1xn: a new train task at every reset"""
    light: bool = False
    """collect Light observations (key and door positions appended); Nx1 is collected Light and read Dark"""
    num_runs: int | None = None
    """independent SAC runs (default: 800 for nx1, 1 for 1xn)"""
    steps: int | None = None
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
    """env steps (the main loop's iterations) between TensorBoard points"""
    progress: bool = True
    """show a progress bar"""


# Settings that change what a run writes. Files in one dataset folder must agree on all of them;
# run count, sharding, device and logging may change between invocations.
DATA_FIELDS = (
    "style",
    "light",
    "steps",
    "size",
    "seed",
    "group_size",
    "hidden",
    "lr",
    "batch_size",
    "gamma",
    "tau",
    "alpha",
    "target_entropy_scale",
    "learning_starts",
    "update_every",
    "exploration_bonus",
)


def resolve(args: Args) -> Args:
    """Fill style-dependent defaults and reject impossible flags with a clear ValueError."""
    defaults = {"nx1": (800, 50_000), "1xn": (1, 100_000)}[args.style]
    args.num_runs = defaults[0] if args.num_runs is None else args.num_runs
    args.steps = defaults[1] if args.steps is None else args.steps
    checks = [
        (args.num_runs >= 1, f"--num-runs must be >= 1, got {args.num_runs}"),
        (args.steps >= 1, f"--steps must be >= 1, got {args.steps}"),
        (args.num_shards >= 1, f"--num-shards must be >= 1, got {args.num_shards}"),
        (
            0 <= args.shard_index < args.num_shards,
            f"--shard-index must lie in 0..{args.num_shards - 1}, got {args.shard_index}",
        ),
        (args.group_size >= 1, f"--group-size must be >= 1, got {args.group_size}"),
        (
            min(args.batch_size, args.hidden, args.update_every) >= 1,
            "--batch-size, --hidden and --update-every must be >= 1",
        ),
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


# ---- Compact codes: an observation is (cell, has_key, t) and a task is (key cell, door cell), so a
# transition fits in 10 bytes instead of 80 (800 agents x 50k steps: 400 MB rather than 3.2 GB). ----
class Codec:
    """Encodes observations as int16 state codes and decodes codes back through tables."""

    def __init__(self, size: int, light: bool, device: torch.device):
        self.size, self.light = size, light
        scale = K.obs_scale(size, K.LIGHT_OBS_DIM)  # (8,): observation = integer features / scale
        cells = size * size
        states = np.arange(cells * 2 * (K.EPISODE_STEPS + 1))
        t, rest = states % (K.EPISODE_STEPS + 1), states // (K.EPISODE_STEPS + 1)
        has_key, cell = rest % 2, rest // 2
        # (states, 4): the Dark observation of every state code
        state_table = (np.stack([cell // size, cell % size, has_key, t], axis=1) / scale[:4]).astype(np.float32)
        tasks = np.arange(cells * cells)
        key, door = tasks // cells, tasks % cells
        # (task codes, 4) in grid cells
        self.task_cells = np.stack([key // size, key % size, door // size, door % size], axis=1)
        self.state_table_t = torch.as_tensor(state_table, device=device)
        self.task_table_t = torch.as_tensor((self.task_cells / scale[4:]).astype(np.float32), device=device)
        self.scale_t = torch.as_tensor(scale[:4], device=device)

    def encode_states(self, observations: torch.Tensor) -> torch.Tensor:
        """(N,) int16 state codes of observations (N, obs_dim), on the observations' device."""
        scaled = torch.round(observations[:, :4] * self.scale_t).long()  # (N, 4) integer features
        cell = scaled[:, 0] * self.size + scaled[:, 1]
        return ((cell * 2 + scaled[:, 2]) * (K.EPISODE_STEPS + 1) + scaled[:, 3]).to(torch.int16)

    def encode_tasks(self, tasks: np.ndarray) -> np.ndarray:
        return (((tasks[:, 0] * self.size + tasks[:, 1]) * self.size + tasks[:, 2]) * self.size + tasks[:, 3]).astype(
            np.int16
        )

    def observations(self, state_codes: torch.Tensor, task_codes: torch.Tensor) -> torch.Tensor:
        """Float observations (..., obs_dim) of code tensors (...)."""
        dark = self.state_table_t[state_codes.long()]
        return torch.cat([dark, self.task_table_t[task_codes.long()]], dim=-1) if self.light else dark


# ---- The population: A independent discrete-SAC agents as batched tensors, its update as a CUDA graph ----
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
        # Adam is elementwise, so one optimizer over the stacked tensors is A independent optimizers;
        # fused: one kernel per tensor, CPU or CUDA; capturable on CUDA, so that a CUDA graph can hold its step.
        self.optimizer = torch.optim.Adam(
            self.actor + self.critic + [self.log_alpha], lr=args.lr, fused=True, capturable=device.type == "cuda"
        )

    @torch.no_grad()
    def act(self, observations: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        """Sample one action per agent: observations (A, obs_dim), uniforms (A,) in [0, 1) -> (A,)."""
        probs = torch.softmax(mlp(self.actor, observations[:, None, :])[:, 0], dim=-1)  # (A, 5)
        # inverse-CDF sampling from per-agent uniforms keeps each agent's randomness its own
        return (probs.cumsum(-1) < uniforms[:, None]).sum(-1).clamp_(max=K.NUM_ACTIONS - 1)

    def update(self, observations, actions, rewards, next_observations, dones) -> dict[str, torch.Tensor]:
        """One SAC update of every agent on its own batch; returns the per-agent losses (A,), detached.
        observations, next_observations (A, B, obs_dim); actions (A, B) int64; rewards, dones (A, B)."""
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
        return {
            "qf_loss": qf_loss.detach(),
            "actor_loss": actor_loss.detach(),
            "alpha_loss": alpha_loss.detach(),
            "entropy": entropy.mean(1),
        }


class GraphedUpdate:
    """`Population.update` captured once as a CUDA graph and replayed: one launch instead of hundreds. It
    returns the graph's own loss tensors (the next replay overwrites them). The first calls run eagerly on a
    side stream, the warm-up that capture needs; if capture raises, one warning and eager updates."""

    def __init__(self, update, warmup_calls: int = 3):
        self.update, self.warmup_calls, self.graph, self.failed = update, warmup_calls, None, False

    def __call__(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.graph is None and not self.failed and self.warmup_calls > 0:
            self.warmup_calls -= 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                losses = self.update(*inputs)
            torch.cuda.current_stream().wait_stream(side)
            return losses
        if self.graph is None and not self.failed:
            try:
                self.inputs, graph = [tensor.clone() for tensor in inputs], torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self.outputs = self.update(*self.inputs)
                self.graph = graph  # capture only recorded this call's update: the replay below runs it
            except Exception as e:  # the capture's own error (it may surface only as the capture closes): go eager
                print(
                    f"warning: CUDA graph capture of the SAC update failed ({type(e).__name__}: {e}); updating eagerly"
                )
                self.failed = True
        if self.failed:
            return self.update(*inputs)
        for static, tensor in zip(self.inputs, inputs):
            static.copy_(tensor)
        self.graph.replay()
        return self.outputs


# ---- Collecting one group of runs ----
def run_tasks(args: Args) -> np.ndarray:
    """The fixed train task of every Nx1 run, (num_runs, 4): a seeded permutation of the train split."""
    train = K.task_split(args.size, "train")
    order = np.random.default_rng(args.seed).permutation(len(train))
    return train[order[np.arange(args.num_runs) % len(train)]]


class NumpyEnv:
    """`KeyDoorVectorEnv` behind `TorchVectorEnv`'s interface (tensors on `device` in and out). 1xn
    needs it: each env draws its next task from its own numpy generator at every reset."""

    def __init__(self, args: Args, runs: list[int], device: torch.device, tasks: np.ndarray | None):
        self.env = K.KeyDoorVectorEnv(len(runs), size=args.size, light=args.light, tasks=tasks, resample=tasks is None)
        self.seeds, self.device = [args.seed * 1_000_003 + r for r in runs], device

    tasks = property(lambda self: self.env.tasks)  # (A, 4): each env's task now

    def reset(self) -> torch.Tensor:
        observations, _ = self.env.reset(seed=self.seeds)
        return torch.as_tensor(observations, device=self.device)

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        *outputs, infos = self.env.step(actions.cpu().numpy())  # observations, rewards, terminations, truncations
        return tuple(
            torch.as_tensor(a, device=self.device) for a in (*outputs, K.final_observations(outputs[0], infos))
        )


def collect_group(
    args: Args,
    runs: list[int],
    device: torch.device,
    writer: SummaryWriter | None,
    *,
    numpy_env: bool = False,
    graph: bool = True,
) -> list[dict[str, np.ndarray]]:
    """Train the runs of one group together for `args.steps` steps; return their histories. `numpy_env`
    (Nx1 stepped on the host) and `graph=False` (eager CUDA updates) are the path before the GPU work,
    which the tests and benchmarks/bench_sac.py compare against (the same data on the CPU)."""
    A, T, B = len(runs), args.steps, args.batch_size
    generator = torch.Generator().manual_seed(args.seed * 1_000_003 + runs[0])
    codec = Codec(args.size, args.light, device)
    obs_dim = K.LIGHT_OBS_DIM if args.light else K.DARK_OBS_DIM
    agents = Population(A, obs_dim, args, generator, device)
    update = GraphedUpdate(agents.update) if graph and device.type == "cuda" else agents.update
    # Per-step draws on the device: a draw on the host would be copied over, and the copy waits for the GPU.
    draws = generator if device.type == "cpu" else torch.Generator(device).manual_seed(args.seed * 1_000_003 + runs[0])
    tasks = run_tasks(args)[runs] if args.style == "nx1" else None  # (A, 4), or None: 1xn draws them
    env = (
        NumpyEnv(args, runs, device, tasks)
        if tasks is None or numpy_env
        else K.TorchVectorEnv(tasks, args.size, args.light, device)
    )
    observations = env.reset()  # (A, obs_dim)
    task_code = torch.as_tensor(codec.encode_tasks(env.tasks), device=device)  # (A,); 1xn refreshes it every step

    # The history doubles as the replay buffer: (A, T) compact codes, on the training device.
    states, next_states, task_codes = (torch.zeros((A, T), dtype=torch.int16, device=device) for _ in range(3))
    actions, rewards = (torch.zeros((A, T), dtype=torch.uint8, device=device) for _ in range(2))
    terminations, truncations = (torch.zeros((A, T), dtype=torch.bool, device=device) for _ in range(2))
    agent_rows = torch.arange(A, device=device)[:, None] * T  # (A, 1) offsets into flattened (A*T) buffers
    visit_slots = 2 * args.size * args.size  # visits of each (cell, has_key) by each agent, for the exploration bonus
    visits = torch.zeros((A, visit_slots), device=device)
    visit_rows, ones = torch.arange(A, device=device) * visit_slots, torch.ones(A, device=device)  # (A,) each

    losses: dict[str, torch.Tensor] = {}
    start_time, last_log = time.time(), 0
    bar = tqdm(total=T, desc=f"runs {runs[0]}..{runs[-1]}", unit="step", disable=not args.progress, dynamic_ncols=True)
    for step in range(T):
        if args.style == "1xn":
            task_code = torch.as_tensor(codec.encode_tasks(env.tasks), device=device)
        state_code = codec.encode_states(observations)  # (A,)
        if step < args.learning_starts:
            action = torch.randint(0, K.NUM_ACTIONS, (A,), generator=draws, device=device)
        else:
            action = agents.act(
                codec.observations(state_code, task_code), torch.rand((A,), generator=draws, device=device)
            )
        observations, reward, terminated, truncated, final = env.step(action)
        next_code = codec.encode_states(final)
        states[:, step] = state_code
        next_states[:, step] = next_code
        visits.view(-1).index_add_(0, visit_rows + next_code.long() // (K.EPISODE_STEPS + 1), ones)
        task_codes[:, step] = task_code
        actions[:, step] = action.to(torch.uint8)
        rewards[:, step] = reward.to(torch.uint8)
        terminations[:, step] = terminated
        truncations[:, step] = truncated

        if step + 1 >= args.learning_starts and (step + 1) % args.update_every == 0:
            index = (agent_rows + torch.randint(0, step + 1, (A, B), generator=draws, device=device)).view(-1)  # (A*B,)
            task_batch = task_codes.view(-1)[index]
            obs_batch = codec.observations(states.view(-1)[index], task_batch).view(A, B, obs_dim)
            next_obs_batch = codec.observations(next_states.view(-1)[index], task_batch).view(A, B, obs_dim)
            # Step 50 is terminal too: time is observed, so the horizon is part of the state.
            done_batch = (terminations.view(-1)[index] | truncations.view(-1)[index]).float().view(A, B)
            reward_batch = rewards.view(-1)[index].float().view(A, B)
            if args.exploration_bonus > 0:
                slot = next_states.view(-1)[index].long().view(A, B) // (K.EPISODE_STEPS + 1)  # (A, B)
                reward_batch = reward_batch + args.exploration_bonus * visits.gather(1, slot).rsqrt()
            losses = update(
                obs_batch, actions.view(-1)[index].long().view(A, B), reward_batch, next_obs_batch, done_batch
            )

        if (step + 1) % args.log_every == 0 or step + 1 == T:
            means = window_means(rewards, terminations | truncations, last_log, step + 1)  # waits for the device
            if writer is not None and not np.isnan(means).all():
                log_population(
                    writer, step + 1, means, losses, agents, A * (step + 1 - last_log) / (time.time() - start_time)
                )
            bar.set_postfix(ret=f"{np.nanmean(means):.2f}" if not np.isnan(means).all() else "-")
            start_time, last_log = time.time(), step + 1
        bar.update(1)
    bar.close()

    observations = [codec.observations(states[i], task_codes[i]).cpu().numpy() for i in range(A)]  # (T, obs_dim) each
    task_codes, actions, rewards, terminations, truncations = (
        buffer.cpu().numpy() for buffer in (task_codes, actions, rewards, terminations, truncations)
    )
    return [
        {
            "observations": observations[i],
            "actions": actions[i].astype(np.int64),
            "rewards": rewards[i].astype(np.float32),
            "terminations": terminations[i],
            "truncations": truncations[i],
            "tasks": codec.task_cells[task_codes[i]].astype(np.int64),
        }
        for i in range(A)
    ]


def window_means(rewards: torch.Tensor, dones: torch.Tensor, start: int, end: int) -> np.ndarray:
    """(A,) each agent's mean return over its episodes that ended in steps [start, end) (NaN: none), from
    the (A, T) buffers at log time. Episodes last at most EPISODE_STEPS: the slice holds them whole."""
    first = max(0, start - K.EPISODE_STEPS)
    episodes = K.stream_episodes(rewards[:, first:end].cpu().numpy(), dones[:, first:end].cpu().numpy())
    late = episodes["end_step"] > start - first  # ended in the window; earlier ones were logged already
    sums = np.bincount(episodes["env"][late], weights=episodes["return"][late], minlength=len(rewards))
    counts = np.bincount(episodes["env"][late], minlength=len(rewards))
    with np.errstate(invalid="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def log_population(writer, step, means, losses, agents, sps) -> None:
    """The population's learning curve (the report's Figure 2) plus losses, temperature and speed."""
    valid = means[~np.isnan(means)]
    writer.add_scalar("charts/episodic_return_mean", valid.mean(), step)
    for q in (10, 25, 50, 75, 90):
        writer.add_scalar(f"charts/episodic_return_p{q}", np.percentile(valid, q), step)
    writer.add_scalar("charts/solved_fraction", (valid >= K.SOLVED_RETURN).mean(), step)
    writer.add_scalar("charts/SPS", sps, step)
    writer.add_scalar("losses/alpha", agents.log_alpha.exp().mean().item(), step)
    for name, value in losses.items():
        writer.add_scalar(f"losses/{name}", value.mean().item(), step)


# ---- Dataset folder: checks before any work, resume, summary ----
def run_path(folder: str, run: int) -> str:
    return os.path.join(folder, f"run_{run:05d}.npz")


def check_folder(folder: str, history_config: dict) -> None:
    """Refuse, naming the file, a folder holding any history that is unreadable or of other data
    settings. Every file is read in full (the summary reads them all anyway): a truncated one is found
    before any work."""
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not (name.startswith("run_") and name.endswith(".npz")):
            continue
        path = os.path.join(folder, name)
        try:
            _, existing = K.load_history(path)
        except ValueError as e:
            message = " ".join(str(e).split())  # one line, whatever the zip library said
            raise ValueError(f"{message}; delete or move it away, then rerun: its group is collected again") from None
        for field in DATA_FIELDS:
            if existing.get(field) != history_config[field]:
                raise ValueError(
                    f"{path} was written with {field}={existing.get(field)!r}, this command has "
                    f"{field}={history_config[field]!r}; use another --data-dir or matching flags"
                )


def summarize(folder: str) -> dict:
    """Share of runs whose last SOLVED_WINDOW episodes average >= SOLVED_RETURN, and when the median run first got there."""
    names = sorted(n for n in os.listdir(folder) if n.startswith("run_") and n.endswith(".npz"))
    final, solved_at = [], []
    for name in names:
        history, _ = K.load_history(os.path.join(folder, name))
        dones = history["terminations"] | history["truncations"]
        returns, _ = K.episode_returns(history["rewards"], dones)
        final.append(returns[-K.SOLVED_WINDOW :].mean() if len(returns) else 0.0)
        solved_at.append(K.first_solved_step(history["rewards"], dones) or np.inf)  # steps count from 1
    final, solved_at = np.array(final), np.array(solved_at)
    median = float(np.median(solved_at)) if len(solved_at) else np.inf
    return {
        "runs": len(names),
        "solved_fraction": float((final >= K.SOLVED_RETURN).mean()) if len(final) else 0.0,
        "final_return_mean": float(final.mean()) if len(final) else 0.0,
        "median_first_solved_step": None if not np.isfinite(median) else int(median),
    }


def keep_freed_memory() -> None:
    """Ask glibc to recycle freed activations instead of returning them to the OS: each update frees
    tensors of a few MB, and the page faults of fresh mmap pages cost about 20% of an update on CPU."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD: the largest value glibc accepts
        libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def main(args: Args) -> dict:
    # 1. flags, seeds, device
    args = resolve(args)
    keep_freed_memory()
    torch.manual_seed(args.seed)  # every draw has its own seeded generator; this is for anything implicit
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")

    # 2. before any work: every file of the folder readable and of these data settings, the folder
    #    writable, temp files that killed writers left there removed
    folder = os.path.join(args.data_dir, f"{args.style}-{'light' if args.light else 'dark'}")
    history_config = {field: getattr(args, field) for field in DATA_FIELDS}
    history_config["algorithm"] = "sac"
    check_folder(folder, history_config)
    K.check_writable(folder)
    removed = K.remove_stale_parts(folder)

    # 3. the groups this shard still owes. Groups are laid out over the global run index and dealt to
    #    shards, so that a run's data depends only on the seed and its group, never on the shards.
    all_groups = [
        list(range(i, min(i + args.group_size, args.num_runs))) for i in range(0, args.num_runs, args.group_size)
    ]
    groups = all_groups[args.shard_index :: args.num_shards]
    todo = [g for g in groups if not all(os.path.exists(run_path(folder, r)) for r in g)]
    if todo:
        K.check_writable("runs")  # TensorBoard's folder
    print(
        f"{folder}: {sum(map(len, groups))} runs in this shard, {len(groups) - len(todo)} of {len(groups)} groups "
        f"already written; device {device}" + (f"; removed {len(removed)} stale temp files" if removed else "")
    )

    # 4. collect group by group; each group's files are written atomically when it finishes
    run_name = f"KeyDoor-{'Light' if args.light else 'Dark'}-{args.size}x{args.size}__{args.exp_name}__{args.seed}__{int(time.time())}"
    for runs in todo:
        writer = SummaryWriter(os.path.join("runs", run_name, f"runs_{runs[0]:05d}-{runs[-1]:05d}"))
        writer.add_text(
            "hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items())
        )
        histories = collect_group(args, runs, device, writer)
        writer.close()
        for run, history in zip(runs, histories):
            path = run_path(folder, run)
            if not os.path.exists(path):  # a group cut short while writing left some: same seed, same data
                K.save_history(path, history, dict(history_config, run=run, task=history["tasks"][0].tolist()))

    # 5. the summary of the whole folder
    summary = summarize(folder)
    print(json.dumps({"dataset": folder, **summary}))
    return summary


if __name__ == "__main__":
    K.run_cli(main, Args)
