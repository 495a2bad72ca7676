"""Population-batched discrete SAC on Key-To-Door that writes one learning history per run.

    python sac_collect.py --style nx1 --light      # 640 runs x 8,000 steps on 9x9, one fixed train task each
    python sac_collect.py --style nx1 --light --num-runs 800 --steps 50000   # the report's scale (GPU)
    python sac_collect.py --style 1xn --light      # one run of 100k steps, a new train task every reset
    python sac_collect.py --style 1xn              # the same, Dark
    torchrun --nproc_per_node 4 sac_collect.py --style nx1 --light   # 4 processes (GPUs), one shard each

Hundreds of independent agents train together as one batched computation: every weight, Adam
moment, temperature and replay buffer carries a leading agent dimension and every layer is one
`torch.baddbmm`. Agents share nothing but the kernels that compute them: each agent's loss is its
own mean over its own batch, summed over agents, so its gradient is exactly what it would be alone.
On CUDA no env step goes through the host: Nx1 steps `K.TorchVectorEnv` on the device (1xn keeps the
numpy env, whose per-env generators draw its tasks) and the update is one replayed CUDA graph.

Output: `data/<style>-<dark|light>/run_XXXXX.npz` (the `.npz` contract of keydoor_env.py), written
atomically when the run's group finishes. Rerunning the same command skips finished runs. Before any
work, every file already in the folder must be readable and of this command's data settings, and a
group must fit in memory; a full disk ends the command in one line, keeping the files written.

Runs are laid out in groups of `--group-size` over the global run index, and a run's data depend only
on the seed and its group, so the groups can be dealt to shards: `--num-shards N --shard-index i` (a
SLURM job array), or `torchrun`, whose process of rank i takes shard i of WORLD_SIZE. The files are
those of one process, byte for byte.
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
    """independent SAC runs (default: 640 for nx1, 1 for 1xn); nx1 runs beyond the train tasks repeat tasks"""
    steps: int | None = None
    """environment steps per run (default: 8,000 for nx1, 100,000 for 1xn)"""
    size: int = 9
    """grid size"""
    seed: int = 1
    """seed of the run-to-task assignment, the networks and the sampling"""
    data_dir: str = "data"
    """the shared folder; histories go to <data_dir>/<style>-<dark|light>/"""
    group_size: int = 128
    """runs trained together as one batched population; more runs go in later groups"""
    num_shards: int = 1
    """split the groups of runs into this many disjoint shards (machines or job-array tasks); torchrun sets it"""
    shard_index: int = 0
    """which shard this process collects, 0 .. num_shards-1; torchrun sets it to the process's rank"""
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
    """count bonus beta/sqrt(visits of the (cell, has_key) reached), on rewards in updates only; 0: the report's SAC"""
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
DEFAULT_NUM_RUNS = {"nx1": 640, "1xn": 1}
DEFAULT_STEPS = {"nx1": 8_000, "1xn": 100_000}
# Run files are named run_00000.npz .. run_99999.npz: readers take them in name order, which is run order only
# while the names keep five digits. (It also bounds a run count no machine holds before anything is computed.)
MAX_RUNS = 99_999
# The compact replay codes below are int16: a task code is below size**4 < 2**15, so 13 is the largest grid.
CODEC_MAX_SIZE = 13


# ---- Compact codes: an observation is (cell, has_key, t) and a task is (key cell, door cell), so a
# transition fits in 10 bytes instead of 80 (800 agents x 50k steps: 400 MB rather than 3.2 GB). ----
class Codec:
    """Encodes observations as int16 state codes and decodes codes back through tables."""

    def __init__(self, size: int, light: bool, device: torch.device):
        self.size = size
        self.light = light
        scale = K.obs_scale(size, K.LIGHT_OBS_DIM)  # (8,): observation = integer features / scale
        cells = size * size
        states = np.arange(cells * 2 * (K.EPISODE_STEPS + 1))
        t = states % (K.EPISODE_STEPS + 1)
        rest = states // (K.EPISODE_STEPS + 1)
        has_key = rest % 2
        cell = rest // 2
        # (states, 4): the Dark observation of every state code
        state_table = (np.stack([cell // size, cell % size, has_key, t], axis=1) / scale[:4]).astype(np.float32)
        tasks = np.arange(cells * cells)
        key = tasks // cells
        door = tasks % cells
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
        """(N,) int16 task codes of tasks (N, 4) in grid cells."""
        key = tasks[:, 0] * self.size + tasks[:, 1]
        return ((key * self.size + tasks[:, 2]) * self.size + tasks[:, 3]).astype(np.int16)

    def observations(self, state_codes: torch.Tensor, task_codes: torch.Tensor) -> torch.Tensor:
        """Float observations (..., obs_dim) of code tensors (...)."""
        dark = self.state_table_t[state_codes.long()]
        return torch.cat([dark, self.task_table_t[task_codes.long()]], dim=-1) if self.light else dark


# ---- The population: A independent discrete-SAC agents as batched tensors, its update as a CUDA graph ----
def init_mlp(num: int, sizes: list[int], generator: torch.Generator, device: torch.device) -> list[torch.Tensor]:
    """`num` independent MLPs as [W1 (num, in, out), b1 (num, 1, out), ...], nn.Linear's default init."""
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
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
        self.num_agents = num_agents
        self.args = args
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
        A = self.num_agents
        alpha = self.log_alpha.exp().detach()[:, None, None]  # (A, 1, 1)
        with torch.no_grad():
            next_logp = torch.log_softmax(mlp(self.actor, next_observations), dim=-1)  # (A, B, 5)
            next_q = mlp(self.critic_target, next_observations.repeat(2, 1, 1))  # (2A, B, 5)
            next_q = torch.minimum(next_q[:A], next_q[A:])
            next_v = (next_logp.exp() * (next_q - alpha * next_logp)).sum(-1)  # (A, B)
            target = rewards + self.args.gamma * (1.0 - dones) * next_v  # (A, B)
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
        self.update = update
        self.warmup_calls = warmup_calls
        self.graph = None
        self.failed = False

    def __call__(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.graph is None and not self.failed and self.warmup_calls > 0:
            self.warmup_calls -= 1
            return self._warm_up(inputs)
        if self.graph is None and not self.failed:
            self._capture(inputs)
        if self.failed:
            return self.update(*inputs)
        for static, tensor in zip(self.inputs, inputs, strict=True):
            static.copy_(tensor)
        self.graph.replay()
        return self.outputs

    def _warm_up(self, inputs) -> dict[str, torch.Tensor]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            losses = self.update(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        return losses

    def _capture(self, inputs) -> None:
        try:
            self.inputs = [tensor.clone() for tensor in inputs]
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.outputs = self.update(*self.inputs)
            self.graph = graph  # capture only recorded this call's update: the replay in __call__ runs it
        except Exception as e:  # the capture's own error (it may surface only as the capture closes): go eager
            print(f"warning: CUDA graph capture of the SAC update failed ({type(e).__name__}: {e}); updating eagerly")
            self.failed = True


# ---- Collecting one group of runs ----
def run_tasks(args: Args, runs: list[int] | None = None) -> np.ndarray:
    """The fixed train task of Nx1 runs `runs` (default: all), (len(runs), 4): a seeded permutation of the train
    split, dealt in order; runs beyond the train tasks take them again from the start (each a fresh agent)."""
    train = K.task_split(args.size, "train")
    order = np.random.default_rng(args.seed).permutation(len(train))
    runs = np.arange(args.num_runs) if runs is None else np.asarray(runs)
    return train[order[runs % len(train)]]


class NumpyEnv:
    """`KeyDoorVectorEnv` behind `TorchVectorEnv`'s interface (tensors on `device` in and out). 1xn
    needs it: each env draws its next task from its own numpy generator at every reset."""

    def __init__(self, args: Args, runs: list[int], device: torch.device, tasks: np.ndarray | None):
        self.env = K.KeyDoorVectorEnv(len(runs), size=args.size, light=args.light, tasks=tasks, resample=tasks is None)
        self.seeds = [args.seed * 1_000_003 + r for r in runs]
        self.device = device

    @property
    def tasks(self) -> np.ndarray:
        """(A, 4): each env's task now."""
        return self.env.tasks

    def reset(self) -> torch.Tensor:
        observations, _ = self.env.reset(seed=self.seeds)
        return torch.as_tensor(observations, device=self.device)

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        observations, rewards, terminations, truncations, infos = self.env.step(actions.cpu().numpy())
        final = K.final_observations(observations, infos)
        outputs = (observations, rewards, terminations, truncations, final)
        return tuple(torch.as_tensor(array, device=self.device) for array in outputs)


def make_env(args: Args, runs: list[int], device: torch.device, numpy_env: bool) -> NumpyEnv | K.TorchVectorEnv:
    """Nx1 steps its fixed tasks in torch on the training device; 1xn (new tasks drawn at resets), or `numpy_env`
    (the path before the GPU work, kept for comparison), steps the numpy env."""
    if args.style == "1xn":
        return NumpyEnv(args, runs, device, None)
    tasks = run_tasks(args, runs)  # (A, 4)
    if numpy_env:
        return NumpyEnv(args, runs, device, tasks)
    return K.TorchVectorEnv(tasks, args.size, args.light, device)


class Replay:
    """The group's history, which doubles as its replay buffer: (A, T) compact codes on the training device,
    10 bytes per agent-step (`REPLAY_BYTES_PER_STEP`)."""

    def __init__(self, num_agents: int, steps: int, device: torch.device):
        shape = (num_agents, steps)
        self.num_agents = num_agents
        self.states = torch.zeros(shape, dtype=torch.int16, device=device)
        self.next_states = torch.zeros(shape, dtype=torch.int16, device=device)  # what the action led to
        self.task_codes = torch.zeros(shape, dtype=torch.int16, device=device)
        self.actions = torch.zeros(shape, dtype=torch.uint8, device=device)
        self.rewards = torch.zeros(shape, dtype=torch.uint8, device=device)
        self.terminations = torch.zeros(shape, dtype=torch.bool, device=device)
        self.truncations = torch.zeros(shape, dtype=torch.bool, device=device)
        self.agent_rows = torch.arange(num_agents, device=device)[:, None] * steps  # (A, 1) offsets into (A*T,)

    def sample_indices(self, filled: int, batch_size: int, draws: torch.Generator) -> torch.Tensor:
        """(A*B,) flat indices of each agent's own `batch_size` uniform draws among its first `filled` steps."""
        shape = (self.num_agents, batch_size)
        steps = torch.randint(0, filled, shape, generator=draws, device=self.agent_rows.device)
        return (self.agent_rows + steps).view(-1)


REPLAY_BYTES_PER_STEP = 10  # states, next states, task codes (int16 each); action, reward (uint8); two done flags


def update_batch(replay: Replay, index: torch.Tensor, codec: Codec, visits: torch.Tensor, args: Args):
    """The update's batch at flat `index` (A*B,): observations and next observations (A, B, obs_dim), actions
    (A, B) int64, rewards with the exploration bonus and dones (A, B) float."""
    shape = (replay.num_agents, args.batch_size)
    task_batch = replay.task_codes.view(-1)[index]
    observations = codec.observations(replay.states.view(-1)[index], task_batch).view(*shape, -1)
    next_observations = codec.observations(replay.next_states.view(-1)[index], task_batch).view(*shape, -1)
    # Step 50 is terminal too: time is observed, so the horizon is part of the state.
    dones = (replay.terminations.view(-1)[index] | replay.truncations.view(-1)[index]).float().view(shape)
    rewards = replay.rewards.view(-1)[index].float().view(shape)
    if args.exploration_bonus > 0:
        slot = replay.next_states.view(-1)[index].long().view(shape) // (K.EPISODE_STEPS + 1)  # (A, B)
        rewards = rewards + args.exploration_bonus * visits.gather(1, slot).rsqrt()
    actions = replay.actions.view(-1)[index].long().view(shape)
    return observations, actions, rewards, next_observations, dones


def collect_group(
    args: Args,
    runs: list[int],
    device: torch.device,
    writer: SummaryWriter | None,
    *,
    numpy_env: bool = False,
    graph: bool = True,
    bar: tqdm | None = None,
) -> list[dict[str, np.ndarray]]:
    """Train the runs of one group together for `args.steps` steps; return their histories. `numpy_env`
    (Nx1 stepped on the host) and `graph=False` (eager CUDA updates) are the path before the GPU work,
    which the tests and benchmarks/bench_sac.py compare against (the same data on the CPU). `bar`, if
    given, advances by one per agent-step."""
    A = len(runs)
    T = args.steps
    # One seed per group, from its first run: a run's data depend on the seed and its group, never on the shards.
    group_seed = args.seed * 1_000_003 + runs[0]
    generator = torch.Generator().manual_seed(group_seed)
    codec = Codec(args.size, args.light, device)
    obs_dim = K.LIGHT_OBS_DIM if args.light else K.DARK_OBS_DIM
    agents = Population(A, obs_dim, args, generator, device)
    update = GraphedUpdate(agents.update) if graph and device.type == "cuda" else agents.update
    # Per-step draws on the device: a draw on the host would be copied over, and the copy waits for the GPU.
    draws = generator if device.type == "cpu" else torch.Generator(device).manual_seed(group_seed)
    env = make_env(args, runs, device, numpy_env)
    observations = env.reset()  # (A, obs_dim)
    task_code = torch.as_tensor(codec.encode_tasks(env.tasks), device=device)  # (A,); 1xn refreshes it every step

    replay = Replay(A, T, device)
    visit_slots = 2 * args.size * args.size  # visits of each (cell, has_key) by each agent, for the exploration bonus
    visits = torch.zeros((A, visit_slots), device=device)
    visit_rows = torch.arange(A, device=device) * visit_slots  # (A,) offsets into the flattened (A * slots,)
    ones = torch.ones(A, device=device)
    losses: dict[str, torch.Tensor] = {}
    log_time = time.time()
    last_log = 0

    for step in range(T):
        # act
        if args.style == "1xn":
            task_code = torch.as_tensor(codec.encode_tasks(env.tasks), device=device)
        state_code = codec.encode_states(observations)  # (A,)
        if step < args.learning_starts:
            action = torch.randint(0, K.NUM_ACTIONS, (A,), generator=draws, device=device)
        else:
            uniforms = torch.rand((A,), generator=draws, device=device)
            action = agents.act(codec.observations(state_code, task_code), uniforms)
        observations, reward, terminated, truncated, final = env.step(action)

        # record: the history is the replay buffer
        next_code = codec.encode_states(final)
        replay.states[:, step] = state_code
        replay.next_states[:, step] = next_code
        visits.view(-1).index_add_(0, visit_rows + next_code.long() // (K.EPISODE_STEPS + 1), ones)
        replay.task_codes[:, step] = task_code
        replay.actions[:, step] = action.to(torch.uint8)
        replay.rewards[:, step] = reward.to(torch.uint8)
        replay.terminations[:, step] = terminated
        replay.truncations[:, step] = truncated

        # learn
        if step + 1 >= args.learning_starts and (step + 1) % args.update_every == 0:
            index = replay.sample_indices(step + 1, args.batch_size, draws)  # (A*B,)
            losses = update(*update_batch(replay, index, codec, visits, args))

        # log
        if (step + 1) % args.log_every == 0 or step + 1 == T:
            dones = replay.terminations | replay.truncations
            means = window_means(replay.rewards, dones, last_log, step + 1)  # waits for the device
            if writer is not None and not np.isnan(means).all():
                sps = A * (step + 1 - last_log) / (time.time() - log_time)
                log_population(writer, step + 1, means, losses, agents, sps)
            if bar is not None:
                bar.set_postfix(ret=f"{np.nanmean(means):.2f}" if not np.isnan(means).all() else "-")
            log_time = time.time()
            last_log = step + 1
        if bar is not None:
            bar.update(A)

    return histories(replay, codec)


def histories(replay: Replay, codec: Codec) -> list[dict[str, np.ndarray]]:
    """The `.npz` contract's arrays of every run of a group, on the host, from its replay codes."""
    task_codes = replay.task_codes.cpu().numpy()
    actions = replay.actions.cpu().numpy()
    rewards = replay.rewards.cpu().numpy()
    terminations = replay.terminations.cpu().numpy()
    truncations = replay.truncations.cpu().numpy()
    runs = []
    for i in range(len(task_codes)):
        observations = codec.observations(replay.states[i], replay.task_codes[i]).cpu().numpy()  # (T, obs_dim)
        runs.append(
            {
                "observations": observations,
                "actions": actions[i].astype(np.int64),
                "rewards": rewards[i].astype(np.float32),
                "terminations": terminations[i],
                "truncations": truncations[i],
                "tasks": codec.task_cells[task_codes[i]].astype(np.int64),
            }
        )
    return runs


def window_means(rewards: torch.Tensor, dones: torch.Tensor, start: int, end: int) -> np.ndarray:
    """(A,) each agent's mean return over its episodes that ended in steps [start, end) (NaN: none), from
    the (A, T) buffers at log time. Episodes last at most EPISODE_STEPS: the slice holds them whole."""
    first = max(0, start - K.EPISODE_STEPS)
    episodes = K.stream_episodes(rewards[:, first:end].cpu().numpy(), dones[:, first:end].cpu().numpy())
    # steps of the slice count from `first`; episodes that ended before `start` were logged already
    return K.window_returns(episodes, len(rewards), start - first, end - first)


def log_population(writer, step, means, losses, agents, sps) -> None:
    """The population's learning curve (the report's Figure 2) plus losses, temperature and speed."""
    valid = means[~np.isnan(means)]
    writer.add_scalar("charts/episodic_return_mean", valid.mean(), step)
    for q in (10, 25, 50, 75, 90):
        writer.add_scalar(f"charts/episodic_return_p{q}", np.percentile(valid, q), step)
    # the share of agents whose episodes since the last log average 1.8: not the summary's solved share, which reads
    # each run's last 10 episodes
    writer.add_scalar("charts/window_solved_fraction", (valid >= K.SOLVED_RETURN).mean(), step)
    writer.add_scalar("charts/SPS", sps, step)
    writer.add_scalar("losses/alpha", agents.log_alpha.exp().mean().item(), step)
    for name, value in losses.items():
        writer.add_scalar(f"losses/{name}", value.mean().item(), step)


# ---- main: check everything before any work, then collect this shard's groups that are not written yet ----
def main(args: Args) -> dict:
    # 1. flags (under torchrun the rank picks the shard), seeds, device
    args = shard_from_launcher(args)
    args = resolve(args)
    keep_freed_memory()
    torch.manual_seed(args.seed)  # every draw has its own seeded generator; this is for anything implicit
    device = training_device(args)
    folder = os.path.join(args.data_dir, f"{args.style}-{'light' if args.light else 'dark'}")

    # 2. before anything is read or written: a group must fit in memory (its replay is allocated up front)
    check_memory(args, min(args.group_size, args.num_runs), device)

    # 3. before any work: every file of the folder readable and of these data settings
    history_config = {field: getattr(args, field) for field in DATA_FIELDS}
    history_config["algorithm"] = "sac"
    check_folder(folder, history_config)

    # 4. the groups this shard still owes
    groups = shard_groups(args)  # at most MAX_RUNS runs (`resolve`)
    written = shard_runs_written(args, folder)
    todo = [group for group in groups if not written.issuperset(group)]
    if todo:
        K.check_writable("runs/")  # TensorBoard's folder
    # the folder writable, with names of the run files' length (one length: `run_file`)
    K.check_writable(os.path.join(folder, run_file(args.num_runs - 1)))
    print(
        f"{folder}: {sum(map(len, groups))} runs in shard {args.shard_index} of {args.num_shards}, "
        f"{len(groups) - len(todo)} of {len(groups)} groups already written; device {device}"
    )

    # 5. collect group by group under one progress bar over the shard (agent-steps; a resumed run starts it at
    #    what is written); each group's files are written atomically when it finishes
    total_steps = args.steps * sum(map(len, groups))
    done_steps = total_steps - args.steps * sum(map(len, todo))
    show_bar = args.progress and os.environ.get("LOCAL_RANK", "0") == "0"  # under torchrun: one bar per machine
    bar = tqdm(
        total=total_steps,
        initial=done_steps,
        unit="step",
        unit_scale=True,
        disable=not show_bar,
        dynamic_ncols=True,
    )
    grid = f"{args.size}x{args.size}"
    run_name = f"KeyDoor-{'Light' if args.light else 'Dark'}-{grid}__{args.exp_name}__{args.seed}__{int(time.time())}"
    for runs in todo:
        bar.set_description(f"runs {runs[0]}..{runs[-1]}")
        writer = SummaryWriter(os.path.join("runs", run_name, f"runs_{runs[0]:05d}-{runs[-1]:05d}"))
        table = "\n".join(f"|{key}|{value}|" for key, value in asdict(args).items())
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table)
        group_histories = collect_group(args, list(runs), device, writer, bar=bar)
        writer.close()
        write_group(folder, runs, group_histories, history_config)
    bar.close()

    # 6. the summary of the whole folder (under torchrun, of the files written so far)
    summary = summarize(folder)
    print(json.dumps({"dataset": folder, **summary}))
    return summary


# ---- Flags: one table of checks, before any work; under torchrun the rank picks the shard ----
def resolve(args: Args) -> Args:
    """Fill style-dependent defaults and reject impossible flags, one ValueError per flag naming it. A bound of
    `math.inf` makes a check refuse inf, and NaN fails every comparison."""
    if args.num_runs is None:
        args.num_runs = DEFAULT_NUM_RUNS[args.style]
    if args.steps is None:
        args.steps = DEFAULT_STEPS[args.style]
    K.check_flags(
        [
            (
                1 <= args.num_runs <= MAX_RUNS,
                f"--num-runs must lie in 1..{MAX_RUNS:,} (run files are named run_00000.npz .. run_{MAX_RUNS}.npz "
                f"and read in name order), got {args.num_runs:,}",
            ),
            (args.steps >= 1, f"--steps must be >= 1, got {args.steps}"),
            (args.num_shards >= 1, f"--num-shards must be >= 1, got {args.num_shards}"),
            (
                0 <= args.shard_index < args.num_shards,
                f"--shard-index must lie in 0..{args.num_shards - 1} (--num-shards), got {args.shard_index}",
            ),
            (args.group_size >= 1, f"--group-size must be >= 1, got {args.group_size}"),
            (args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}"),
            (args.hidden >= 1, f"--hidden must be >= 1, got {args.hidden}"),
            (args.update_every >= 1, f"--update-every must be >= 1, got {args.update_every}"),
            (args.learning_starts >= 1, f"--learning-starts must be >= 1, got {args.learning_starts}"),
            (args.log_every >= 1, f"--log-every must be >= 1, got {args.log_every}"),
            (
                3 <= args.size <= CODEC_MAX_SIZE,
                f"--size must lie in 3..{CODEC_MAX_SIZE} (compact replay codes), got {args.size}",
            ),
            (0 < args.lr < math.inf, f"--lr must be a finite number > 0, got {args.lr}"),
            (0 <= args.gamma <= 1, f"--gamma must be a finite number in [0, 1], got {args.gamma}"),
            (0 < args.tau <= 1, f"--tau must be a finite number in (0, 1], got {args.tau}"),
            (0 < args.alpha < math.inf, f"--alpha must be a finite number > 0, got {args.alpha}"),
            (
                0 <= args.target_entropy_scale <= 1,
                f"--target-entropy-scale must be a finite number in [0, 1], got {args.target_entropy_scale}",
            ),
            (
                0 <= args.exploration_bonus < math.inf,
                f"--exploration-bonus must be a finite number >= 0, got {args.exploration_bonus}",
            ),
        ]
    )
    return args


def shard_from_launcher(args: Args) -> Args:
    """Under torchrun (RANK and WORLD_SIZE set) the process of rank r collects shard r of WORLD_SIZE; no process
    group is needed, since shards share nothing. Explicit --num-shards/--shard-index must agree with them."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return args
    try:
        rank = int(os.environ["RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
    except ValueError:
        raise ValueError(
            f"RANK={os.environ['RANK']!r} and WORLD_SIZE={os.environ['WORLD_SIZE']!r} (set by torchrun) "
            "must be integers"
        ) from None
    flags_given = (args.num_shards, args.shard_index) != (1, 0)
    K.check_flags(
        [
            (
                0 <= rank < world_size,
                f"RANK={rank} must lie in 0..WORLD_SIZE-1 (WORLD_SIZE={world_size}, set by torchrun)",
            ),
            (
                not flags_given or (args.num_shards, args.shard_index) == (world_size, rank),
                f"--num-shards {args.num_shards} --shard-index {args.shard_index} conflict with torchrun's "
                f"WORLD_SIZE={world_size} RANK={rank}: under torchrun each process takes shard RANK of WORLD_SIZE; "
                "drop the two flags",
            ),
        ]
    )
    args.num_shards = world_size
    args.shard_index = rank
    return args


# ---- The machine: the device, the allocator, and whether a group fits in memory ----
def training_device(args: Args) -> torch.device:
    """CUDA if asked and present; under torchrun, the process's own GPU (LOCAL_RANK)."""
    if not (args.cuda and torch.cuda.is_available()):
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)  # streams and CUDA graphs go to the current device: make it this process's GPU
    return device


def keep_freed_memory() -> None:
    """Ask glibc to recycle freed activations instead of returning them to the OS: each update frees
    tensors of a few MB, and the page faults of fresh mmap pages cost about 20% of an update on CPU."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD: the largest value glibc accepts
        libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def available_memory() -> int | None:
    """Bytes of host memory a process can still take without swapping: Linux's MemAvailable; where there is no
    /proc/meminfo, the physical memory (an upper bound: what exceeds it no amount of freeing holds); else None.
    `check_memory` refuses, before any work, a group whose replay buffer would not fit."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the kernel counts kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def memory_needed(args: Args, num_agents: int) -> dict[str, int]:
    """Bytes a group of `num_agents` runs holds at its peak, by part: "replay" (the codes of every step, on the
    training device), "histories" (built on the host at the end, all kept until written: observations float32
    (obs_dim), action int64, reward float32, task int64 (4), two bool flags per step), "networks" (weights,
    targets, gradients and Adam's two moments of actor and twin critics: 14 copies of one MLP's floats), "update"
    (an update's activations, about 12 hidden-wide floats per sample and network)."""
    obs_dim = K.LIGHT_OBS_DIM if args.light else K.DARK_OBS_DIM
    mlp_floats = (obs_dim + 1) * args.hidden + (args.hidden + 1) * args.hidden + (args.hidden + 1) * K.NUM_ACTIONS
    agent_steps = num_agents * args.steps
    return {
        "replay": agent_steps * REPLAY_BYTES_PER_STEP,
        "histories": agent_steps * (4 * obs_dim + 8 + 4 + 8 * 4 + 2),
        "networks": num_agents * 14 * mlp_floats * 4,
        "update": num_agents * args.batch_size * (12 * args.hidden + 40) * 4,
    }


def check_memory(args: Args, num_agents: int, device: torch.device) -> None:
    """Refuse, naming the flag to lower, a group that cannot fit, before its replay is allocated: on the CPU
    everything is in host memory; on CUDA the replay buffer, networks and activations are on the device and the
    histories on the host. Where the free memory is unknown, nothing is refused."""
    parts = memory_needed(args, num_agents)
    if device.type == "cuda":
        free_on_device = torch.cuda.mem_get_info(device)[0]
        pools = [
            (("replay", "networks", "update"), free_on_device, f"{device} memory"),
            (("histories",), available_memory(), "memory"),
        ]
    else:
        pools = [(tuple(parts), available_memory(), "memory")]
    for names, available, pool in pools:
        needed = sum(parts[name] for name in names)
        if available is None or needed <= available:
            continue
        largest = max(names, key=parts.__getitem__)
        flag = {
            "replay": f"--steps {args.steps:,}",
            "histories": f"--steps {args.steps:,}",
            "networks": f"--hidden {args.hidden:,}",
            "update": f"--batch-size {args.batch_size:,}",
        }[largest]
        others = "--num-runs" if args.num_runs < args.group_size else "--group-size"
        raise ValueError(
            f"{flag}: a group of {num_agents:,} runs trained together needs about {needed / 1e6:,.0f} MB of {pool} "
            f"(most for its {largest}), {available / 1e6:,.0f} MB is available; lower {flag.split()[0]} or {others}"
        )


# ---- The dataset folder: the groups of this shard, what is written, checks before any work, the summary ----
def shard_groups(args: Args) -> list[range]:
    """This shard's groups of runs. Groups are laid out over the global run index and dealt to shards in turn,
    so that a run's data depend only on the seed and its group, never on the shards."""
    num_groups = math.ceil(args.num_runs / args.group_size)
    groups = []
    for group in range(args.shard_index, num_groups, args.num_shards):
        first = group * args.group_size
        groups.append(range(first, min(first + args.group_size, args.num_runs)))
    return groups


def run_file(run: int) -> str:
    return f"run_{run:05d}.npz"


def run_files(folder: str) -> list[str]:
    """The names of the run files in `folder`, in run order; none where the folder does not exist yet. Something
    named like a run that is not a regular file is refused: a FIFO would block its read, a folder fail its write."""
    listed = os.listdir(folder) if os.path.isdir(folder) else []
    names = sorted(name for name in listed if name.startswith("run_") and name.endswith(".npz"))
    strays = [name for name in names if not os.path.isfile(os.path.join(folder, name))]
    if strays:
        raise ValueError(f"{os.path.join(folder, strays[0])} is not a regular file; move it away")
    return names


def shard_runs_written(args: Args, folder: str) -> set[int]:
    """The runs of this shard whose files are in `folder` (one listing of the folder, not a look-up per run)."""
    names = set(run_files(folder))
    return {run for group in shard_groups(args) for run in group if run_file(run) in names}


def check_folder(folder: str, history_config: dict) -> None:
    """Refuse, naming the file, a folder holding any history that is unreadable or of other data
    settings. Every file is read in full (the summary reads them all anyway): a truncated one is found
    before any work."""
    for name in run_files(folder):
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


def write_group(folder: str, runs: range, histories: list[dict], history_config: dict) -> None:
    """Each run's file, atomically (a full disk ends the command in one line, keeping the files written). A group
    cut short while writing left some: same seed, same data, kept."""
    for run, history in zip(runs, histories, strict=True):
        path = os.path.join(folder, run_file(run))
        if not os.path.exists(path):
            K.save_history(path, history, dict(history_config, run=run, task=history["tasks"][0].tolist()))


def summarize(folder: str) -> dict:
    """Share of runs whose last SOLVED_WINDOW episodes average >= SOLVED_RETURN, and when the median run first
    got there. A folder that does not exist (a shard with nothing to do) holds no runs."""
    final = []
    solved_at = []
    for name in run_files(folder):
        history, _ = K.load_history(os.path.join(folder, name))
        dones = history["terminations"] | history["truncations"]
        returns, _ = K.episode_returns(history["rewards"], dones)
        final.append(returns[-K.SOLVED_WINDOW :].mean() if len(returns) else 0.0)
        solved_at.append(K.first_solved_step(history["rewards"], dones) or np.inf)  # steps count from 1
    final = np.array(final)
    median = float(np.median(solved_at)) if solved_at else np.inf
    return {
        "runs": len(final),
        "solved_fraction": float((final >= K.SOLVED_RETURN).mean()) if len(final) else 0.0,
        "final_return_mean": float(final.mean()) if len(final) else 0.0,
        "median_first_solved_step": None if not np.isfinite(median) else int(median),
    }


if __name__ == "__main__":
    K.run_cli(main, Args)
