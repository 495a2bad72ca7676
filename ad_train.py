"""Algorithm Distillation: a causal Transformer trained on learning histories to predict the next action.

    python ad_train.py                                    # AD on Nx1 histories read Dark (data/nx1-light), context 250
    python ad_train.py --context 50                       # the same recipe at context 50
    python ad_train.py --light-obs                        # AD on Light data
    python ad_train.py --dataset 1xn-dark --context 2 --history-steps 0 --episode-stride 1   # BC on whole 1xN histories
    torchrun --standalone --nproc_per_node 4 ad_train.py  # one model on 4 GPUs (DDP), same code

The defaults are the laptop recipe (3 blocks of width 64, 4,000 iterations of 32 windows that keep every 8th
episode, the arrival token). The report's GPU scale: `--n-layer 4 --n-embd 128 --d-ff 768 --batch-size 64 --lr 3e-4
--warmup-iterations 500 --iterations 100000 --episode-stride 1 --no-arrival-token --context 500`.

A token per timestep embeds (o_t, a_{t-1}, r_{t-1}, d_{t-1}); the model predicts a_t at every position of a window
of `--context` steps of one history, across episodes. The checkpoint holds all `ad_eval.py` needs; rerunning the
command resumes it, bit for bit. Ctrl-C (SIGINT), SIGTERM and SIGHUP save a checkpoint after the iteration in
flight, then exit (130, 143, 129). `rollout()`, beside the model as nanoGPT keeps `generate()`, runs a model in
context on new tasks. `--arrival-token` adds p_{t-1}, the cell the previous action led to: the door ends the episode,
so its cell is in no o_t and must otherwise be inferred from the last position and action (see `arrival_cells`).

Under torchrun (PyTorch's launcher; on several nodes `torchrun --nnodes N --nproc_per_node G --rdzv-backend c10d
--rdzv-endpoint HOST:PORT ad_train.py ...`, under SLURM one `srun torchrun ...` per node) every process draws the same
global batch of `--batch-size` windows and trains on its own share; DDP averages the gradients, so each update is the
one-process update of that batch. Rank 0 alone prints, logs, evaluates and writes the checkpoint.
"""

import contextlib
import hashlib
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

import keydoor_env as K


@dataclass
class Args:
    dataset: str = "nx1-light"
    """dataset folder under --data-dir: nx1-light, 1xn-dark, 1xn-light or rl2"""
    data_dir: str = "data"
    """the shared folder of datasets and checkpoints"""
    light_obs: bool = False
    """keep the 4 Light features; by default Light data is read Dark"""
    context: int = 250
    """window length in timesteps (the model's context)"""
    history_steps: int = -1
    """windows from the first N steps of each history; -1: twice the step where it first averages 1.8; 0: all"""
    episode_stride: int = 8
    """keep every k-th episode of each history (after --history-steps), so a window spans k times more learning"""
    arrival_token: bool = True
    """add to each token the cell the previous action led to (the door's cell at an episode's end)"""
    n_layer: int = 3
    """Transformer blocks"""
    n_head: int = 4
    """attention heads"""
    n_embd: int = 64
    """embedding width"""
    d_ff: int = 256
    """feed-forward width"""
    dropout: float = 0.1
    """dropout in embeddings, attention weights, attention output and feed-forward"""
    attn_dropout: float | None = None
    """dropout on the attention weights alone (None: --dropout); 0 lets PyTorch run attention on the CPU in its fused
    kernel, which has no dropout: several times faster training at long context (docs/speed.md)"""
    batch_size: int = 32
    """windows per iteration (over all processes under torchrun)"""
    iterations: int = 4_000
    """training iterations, one gradient update each"""
    lr: float = 1e-3
    """peak learning rate"""
    warmup_iterations: int = 200
    """linear warm-up of the learning rate, then cosine decay to 10%"""
    weight_decay: float = 0.1
    """AdamW weight decay, on matrices only"""
    max_grad_norm: float = 1.0
    """gradient norm clipping"""
    val_fraction: float = 0.05
    """share of whole runs held out for the validation loss (a single-run dataset holds out its last steps)"""
    val_every: int = 250
    """iterations between validation losses"""
    eval_every: int = 1000
    """iterations between in-context evaluations on validation tasks (0: never)"""
    eval_envs: int = 4
    """validation tasks in the in-training evaluation"""
    eval_steps: int = 1000
    """env steps of the in-training evaluation"""
    log_every: int = 50
    """iterations between TensorBoard points of the training loss"""
    save_every: int = 500
    """iterations between checkpoints (Ctrl-C, SIGTERM and SIGHUP save one too)"""
    seed: int = 1
    """seed of python, numpy and torch"""
    exp_name: str = "ad"
    """experiment name, in the run and checkpoint names"""
    cuda: bool = True
    """use CUDA when available (under torchrun: the GPU of LOCAL_RANK)"""
    compile: bool = False
    """torch.compile the model (on one GPU with CUDA graphs: mode reduce-overhead)"""
    progress: bool = True
    """show a progress bar"""


# --- Data: every history in memory once, in compact dtypes, on the training device
# A history's first token has no previous step. It is built like the first token of any later episode: previous
# action "stay", reward 0, done 1 (and arrival (0, 0), the start cell the agent stands on). So the model sees no
# special case at a history's start, no embedding is left untrained, and `rollout`'s first token is the same.
FIRST_PREV_ACTION = 0
FIRST_PREV_REWARD = 0
FIRST_PREV_DONE = 1
FIRST_PREV_ARRIVAL = (0, 0)


def load_dataset(
    folder: str,
    light_obs: bool,
    history_steps: int = 0,
    min_steps: int = 1,
    arrival: bool = False,
    episode_stride: int = 1,
):
    """Every `.npz` history of `folder` -> `(runs, meta)`: per run `select_steps`'s arrays with the observations
    as `obs_codes` uint8 (T, D) (and `prev_arrivals` with `arrival`); meta holds size, obs_dim, obs_scale,
    data_obs_dim (the features the files hold: 8 for Light data read Dark) and fingerprint (a SHA-256 of the
    histories' names, actions and rewards: what a resume must find again). Every history must share the first
    one's grid and features, and hold only tasks of the train split."""
    obs_dim = K.LIGHT_OBS_DIM if light_obs else K.DARK_OBS_DIM
    runs = []
    first = None  # (path, observation features, grid size) of the first history: the others must match it
    digest = hashlib.sha256()  # the histories' names and contents: a resume on other data is refused (`check_resume`)
    for path in K.history_paths(folder):
        history, history_config = K.load_history(path)
        digest.update(os.path.basename(path).encode() + history["actions"].tobytes() + history["rewards"].tobytes())
        size = history_config["size"]  # `K.load_history` refuses a config without one
        features = history["observations"].shape[1]
        if first is None:
            first = (path, features, size)
        if (features, size) != first[1:]:
            raise ValueError(
                f"{first[0]} has {first[1]} observation features on a {first[2]}x{first[2]} grid, "
                f"{path} has {features} on {size}x{size}: one dataset, one layout"
            )
        if light_obs and features != K.LIGHT_OBS_DIM:
            raise ValueError(f"--light-obs needs Light data, but {path} holds Dark observations")
        check_train_tasks(history["tasks"], size, path)
        if arrival:
            history["arrivals"] = arrival_cells(history, size, path)
        run = select_steps(history, history_steps, min_steps, episode_stride)
        scale = K.obs_scale(size, obs_dim)
        observations = run.pop("observations")[:, :obs_dim]  # Light read Dark: drop the 4 task features
        run["obs_codes"] = np.rint(observations * scale).astype(np.uint8)  # integers: `K.load_history` checked
        runs.append(run)
    meta = {
        "size": size,
        "obs_dim": obs_dim,
        "obs_scale": scale.tolist(),
        "data_obs_dim": features,
        "fingerprint": digest.hexdigest(),
    }
    return runs, meta


def arrival_cells(history: dict, size: int, name: str) -> np.ndarray:
    """The cell (x, y) each action led to, uint8 (T, 2): the position moved by the action, clipped at the border;
    checked against the next observations and doors, so that other dynamics fail here, not teach wrong cells."""
    cells = np.rint(history["observations"][:, :2] * (size - 1)).astype(np.int64)  # (T, 2)
    moved = np.clip(cells + K.ACTION_DELTAS[history["actions"]], 0, size - 1)  # (T, 2)
    going_on = ~(history["terminations"] | history["truncations"])[:-1]  # (T - 1,) the next step is the same episode
    opened = history["terminations"]  # (T,) the action entered the door
    follows_moves = np.array_equal(moved[:-1][going_on], cells[1:][going_on])
    ends_at_doors = np.array_equal(moved[opened], history["tasks"][opened, 2:])
    if not (follows_moves and ends_at_doors):
        raise ValueError(
            f"{name}: observations do not follow the moves of the {size}x{size} grid, "
            "so --arrival-token cannot compute the arrival cells"
        )
    return moved.astype(np.uint8)


def select_steps(history: dict, history_steps: int, min_steps: int = 1, episode_stride: int = 1) -> dict:
    """The first `history_steps` steps (-1: twice the step where the run first solved its task, and enough for
    `min_steps` kept steps; 0: all), then every `episode_stride`-th episode of them (episodes 0, k, 2k, ...), with
    each kept step's previous action, reward, done and, given "arrivals" (T, 2), arrival cell.

    The previous-step fields are those of the kept sequence: the first step of a kept episode sees the last action,
    reward and done of the kept episode before it, as the model sees episode boundaries in context."""
    dones = history["terminations"] | history["truncations"]
    if history_steps < 0:  # concentrate windows on the learning phase of this run
        solved = K.first_solved_step(history["rewards"], dones)
        history_steps = len(dones) if solved is None else max(2 * solved, min_steps * episode_stride)
    steps = np.arange(len(dones))
    episode = np.concatenate([[0], np.cumsum(dones)[:-1]])  # the episode each step belongs to
    kept = steps[(steps < (history_steps or len(dones))) & (episode % episode_stride == 0)]  # (T_kept,)
    actions = history["actions"][kept].astype(np.uint8)
    run = {
        "observations": history["observations"][kept],
        "actions": actions,
        "prev_actions": np.concatenate([[FIRST_PREV_ACTION], actions[:-1]]).astype(np.uint8),
        "prev_rewards": np.concatenate([[FIRST_PREV_REWARD], history["rewards"][kept][:-1]]).astype(np.uint8),
        "prev_dones": np.concatenate([[FIRST_PREV_DONE], dones[kept][:-1]]).astype(bool),
    }
    if "arrivals" in history:
        run["prev_arrivals"] = np.concatenate([[FIRST_PREV_ARRIVAL], history["arrivals"][kept][:-1]]).astype(np.uint8)
    return run


def split_runs(runs: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out whole runs (tasks) for the validation loss: (train runs, validation runs)."""
    if val_fraction <= 0:
        return runs, []
    if len(runs) == 1:  # a single-run dataset (1xN) holds out its last steps
        cut = int(len(runs[0]["actions"]) * (1 - val_fraction))
        train = {key: value[:cut] for key, value in runs[0].items()}
        validation = {key: value[cut:] for key, value in runs[0].items()}
        return [train], [validation]
    order = np.random.default_rng(seed).permutation(len(runs))
    num_val = min(len(runs) - 1, int(math.ceil(val_fraction * len(runs))))
    return [runs[i] for i in order[num_val:]], [runs[i] for i in order[:num_val]]


class WindowSampler:
    """All runs' arrays as flat (tokens, ...) tensors on the device; the host draws only a batch's start indices."""

    def __init__(self, runs: list[dict], context: int, obs_scale: list[float], device: torch.device):
        lengths = np.array([len(run["actions"]) for run in runs])  # (R,)
        usable = lengths >= context  # a run shorter than the context holds no window
        if not usable.any():
            raise ValueError(f"--context {context} is longer than every history (longest {lengths.max()} steps)")
        self.device = device
        self.tokens = int(lengths.sum())
        run_offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # (R,) each run's first token in the arrays
        self.offsets = torch.as_tensor(run_offsets[usable])  # (R_usable,)
        self.num_starts = torch.as_tensor(lengths[usable] - context + 1)  # (R_usable,) a window starts at 0..T-C
        self.arrays = {key: torch.as_tensor(np.concatenate([run[key] for run in runs])).to(device) for key in runs[0]}
        self.obs_scale = torch.tensor(obs_scale, device=device)
        self.positions = torch.arange(context, device=device)  # (C,)

    def sample(self, batch_size: int, generator: torch.Generator, rank: int = 0, world_size: int = 1):
        """A batch of windows: (inputs dict of (B, C, ...) tensors, targets (B, C) int64), B = batch_size / world_size.

        A window is a usable run drawn uniformly, then one of its `num_starts` starts drawn uniformly: it lies inside
        that run. Under torchrun every process draws the same `batch_size` windows from the same generator and
        keeps its own contiguous share, so that together they train on the batch one process would draw."""
        run = torch.randint(len(self.offsets), (batch_size,), generator=generator)  # (batch_size,)
        num_starts = self.num_starts[run]
        # floor(u * n) for u uniform in [0, 1) is uniform in 0..n-1 (the minimum: should float32 round u * n up to n)
        start = (torch.rand(batch_size, generator=generator) * num_starts).long()
        start = torch.minimum(start, num_starts - 1)
        first = self.offsets[run] + start  # (batch_size,) each window's first token in the flat arrays
        share = batch_size // world_size
        first = first[rank * share : (rank + 1) * share]  # (B,)
        if self.device.type == "cuda":
            first = first.pin_memory()  # then the copy to the GPU need not wait for it
        index = first.to(self.device, non_blocking=True)[:, None] + self.positions  # (B, C)
        return self.gather(index)

    def gather(self, index: torch.Tensor):
        """Windows at token indices `index` (B, C) on the device, as the model's inputs and targets."""
        inputs = {key: value[index] for key, value in self.arrays.items()}
        targets = inputs.pop("actions").long()
        observations = inputs.pop("obs_codes").float() / self.obs_scale  # exactly the env's float32 observations
        inputs = {key: value.long() if key == "prev_actions" else value.float() for key, value in inputs.items()}
        if "prev_arrivals" in inputs:  # cells scaled as the observation's positions
            inputs["prev_arrivals"] = inputs["prev_arrivals"] / self.obs_scale[0]
        return {"observations": observations, **inputs}, targets


# --- The model (nanoGPT-style)
@dataclass
class ModelConfig:
    """Built from `Args` by field name in `main`, so that the defaults live once, in `Args`."""

    obs_dim: int
    context: int
    n_layer: int
    n_head: int
    n_embd: int
    d_ff: int
    dropout: float
    arrival: bool  # tokens carry p_{t-1}, the (x, y) the previous action led to (--arrival-token)
    attn_dropout: float | None = None  # None: `dropout`, as in every checkpoint written before --attn-dropout


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head  # --n-embd is a multiple of it (`validate`): the heads split the width
        self.attn_dropout = config.dropout if config.attn_dropout is None else config.attn_dropout
        self.context = config.context
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.proj_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """x (B, T, E). `cache` (this layer's "k", "v") is filled from empty by a window, then grows a token a call."""
        B, T, E = x.shape
        q, k, v = self.qkv(x).split(E, dim=2)
        q, k, v = (t.view(B, T, self.n_head, E // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        if cache is not None:  # preallocated to the context: one in-place write per step, no copy
            if "k" not in cache:
                cache["k"] = k.new_empty(B, self.n_head, self.context, E // self.n_head)
                cache["v"] = torch.empty_like(cache["k"])
                cache["len"] = 0
            end = cache["len"] + T
            # several new tokens over cached ones would need a block-causal mask, which rollout never needs
            assert end <= self.context and (cache["len"] == 0 or T == 1), f"KV cache misuse: {cache['len']} + {T}"
            cache["k"][:, :, cache["len"] : end] = k
            cache["v"][:, :, cache["len"] : end] = v
            cache["len"] = end
            k = cache["k"][:, :, :end]
            v = cache["v"][:, :, :end]
        # causal over a window from its start; one token after a filled cache sees all of it
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=k.shape[2] == T, dropout_p=self.attn_dropout if self.training else 0.0
        )
        return self.proj_dropout(self.proj(y.transpose(1, 2).reshape(B, T, E)))


class Block(nn.Module):
    """Pre-norm Transformer block."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        # created in this order (both norms first): the order of `parameters()`, which the optimizer's saved state
        # and the gradient-norm sum follow, stays that of earlier checkpoints, so they resume and reproduce exactly
        self.ln1 = nn.LayerNorm(config.n_embd)
        self.ln2 = nn.LayerNorm(config.n_embd)
        self.attn = SelfAttention(config)
        self.mlp = nn.Sequential(
            nn.Linear(config.n_embd, config.d_ff),
            nn.GELU(),
            nn.Linear(config.d_ff, config.n_embd),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


class DecisionModel(nn.Module):
    """Causal Transformer over tokens (o_t, a_{t-1}, r_{t-1}, d_{t-1}[, p_{t-1}]) predicting a_t."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        # one linear embedding of [o_t, one-hot a_{t-1}, r_{t-1}, d_{t-1}(, p_{t-1})]
        self.embed = nn.Linear(config.obs_dim + K.NUM_ACTIONS + 2 + 2 * config.arrival, config.n_embd)
        self.pos = nn.Embedding(config.context, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, K.NUM_ACTIONS)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(
        self, observations, prev_actions, prev_rewards, prev_dones, prev_arrivals=None, *, positions=None, caches=None
    ):
        """observations (B, T, obs_dim); prev_actions (B, T) int64 in 0..4; prev_rewards, prev_dones (B, T);
        prev_arrivals (B, T, 2) scaled cells, read only with `config.arrival`. positions (T,) int64 (default
        0..T-1); caches: one dict per block for incremental decoding. Returns logits (B, T, 5)."""
        B, T, _ = observations.shape
        if positions is None:
            positions = torch.arange(T, device=observations.device)
        parts = [
            observations,
            F.one_hot(prev_actions, K.NUM_ACTIONS).to(observations.dtype),
            prev_rewards[..., None],
            prev_dones[..., None],
        ]
        if self.config.arrival:
            if prev_arrivals is None:
                raise ValueError("this model was trained with --arrival-token: it needs prev_arrivals")
            parts.append(prev_arrivals)
        features = torch.cat(parts, dim=-1)  # (B, T, obs_dim + 7 [+ 2])
        x = self.drop(self.embed(features) + self.pos(positions))  # (B, T, E)
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        return self.head(self.ln_f(x))

    def optimizer(self, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
        """AdamW with weight decay on matrices only (not biases, norms)."""
        groups = [
            {"params": [p for p in self.parameters() if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in self.parameters() if p.dim() < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=device.type == "cuda")


# --- In-context rollout: the model acts on new tasks from its own history, with no gradient step
def window_starts(steps: int, context: int, keep: int = 0) -> np.ndarray:
    """Start of the window the prediction at step t is made on, int64 (steps,). Position embeddings are learned, so
    a window cannot slide by one token on a KV cache: it grows to `context` tokens, then the next token starts a new
    window of the last `keep` tokens (the new one last), refilled at positions 0..keep-1; keep = 0 means context // 2,
    about two token computations a step. A larger `keep` forgets less at a restart and restarts more often (every
    context - keep + 1 steps): keep = context slides the window one step at a time, each step a whole window. `keep`
    lies in 0..context (`ad_eval.py` checks --window-keep)."""
    if keep == 0:
        keep = max(1, context // 2)
    starts = np.zeros(steps, dtype=np.int64)
    start = 0
    for t in range(steps):
        if t - start + 1 > context:  # token t would not fit: restart the window from the last `keep` tokens
            start = t + 1 - keep
        starts[t] = start
    return starts


def sample_actions(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One action per row of `probs` (N, A), int64 (N,): bit for bit what `torch.multinomial(probs, 1, generator=
    generator)[:, 0]` draws, since ATen draws one sample as this same exponential race (argmax of p / q, q ~ Exp(1),
    from the same generator), but without multinomial's two checks of `probs` on the host, each a wait for the GPU."""
    noise = torch.empty_like(probs).exponential_(1, generator=generator)  # (N, A)
    return (probs / noise).argmax(-1)


@torch.no_grad()
def rollout(
    model: DecisionModel,
    tasks: np.ndarray,
    steps: int,
    size: int,
    seed: int,
    device: torch.device,
    *,
    greedy: bool = False,
    temperature: float = 1.0,
    full_recompute: bool = False,
    window_keep: int = 0,
    progress: bool = False,
    desc: str = "",
) -> dict:
    """Run `model` in context on `tasks` (N, 4) for `steps` env steps each, the same task after every reset, in one
    batch on `device` (the env too: no host round trip per step), sampling with a generator seeded by `seed` from
    softmax(logits / `temperature`) (1: the model's own distribution; `greedy`: its argmax).
    `full_recompute` is the KV cache's reference; `window_keep` the tokens a full window keeps (`window_starts`).
    Returns "episodes" (env, return, end_step) and the "tokens" fed."""
    was_training = model.training
    config = model.config
    N = len(tasks)
    model.eval()
    env = K.TorchVectorEnv(tasks, size, light=config.obs_dim == K.LIGHT_OBS_DIM, device=device)

    def zeros(*shape, dtype=torch.float32) -> torch.Tensor:
        return torch.zeros(N, steps, *shape, dtype=dtype, device=device)  # (N, steps, *shape)

    # every token the model is fed; the first is built as in training (FIRST_PREV_*): reward 0 and arrival (0, 0)
    # are zeros, and so are the scaled (0, 0)
    tokens = {
        "observations": zeros(config.obs_dim),
        "prev_actions": zeros(dtype=torch.long) + FIRST_PREV_ACTION,
        "prev_rewards": zeros() + FIRST_PREV_REWARD,
        "prev_dones": zeros(),
        "prev_arrivals": zeros(2),
    }
    tokens["prev_dones"][:, 0] = FIRST_PREV_DONE
    rewards = zeros()
    dones = zeros(dtype=torch.bool)
    starts = window_starts(steps, config.context, window_keep)
    positions = torch.arange(config.context, device=device)

    def window(lo: int, hi: int) -> dict:
        return {key: value[:, lo:hi] for key, value in tokens.items()}

    generator = torch.Generator(device=device).manual_seed(seed)
    observations = env.reset()
    caches = None
    for t in tqdm(range(steps), disable=not progress, desc=desc, mininterval=1.0):
        tokens["observations"][:, t] = observations
        start = int(starts[t])
        if full_recompute or t == 0 or start != starts[t - 1]:  # a new window: (re)fill the cache from its tokens
            caches = None if full_recompute else [{} for _ in model.blocks]
            logits = model(**window(start, t + 1), caches=caches)[:, -1]
        else:
            logits = model(**window(t, t + 1), positions=positions[t - start : t - start + 1], caches=caches)[:, -1]
        logits = logits.float()
        if greedy:
            actions = logits.argmax(-1)
        else:
            actions = sample_actions((logits / temperature).softmax(-1), generator)
        observations, step_rewards, terminations, truncations, final = env.step(actions)
        rewards[:, t] = step_rewards
        dones[:, t] = terminations | truncations
        if t + 1 < steps:  # the next token's previous step
            tokens["prev_actions"][:, t + 1] = actions
            tokens["prev_rewards"][:, t + 1] = rewards[:, t]
            tokens["prev_dones"][:, t + 1] = dones[:, t].float()
            tokens["prev_arrivals"][:, t + 1] = final[:, :2]
    model.train(was_training)
    return {"episodes": K.stream_episodes(rewards.cpu().numpy(), dones.cpu().numpy()), "tokens": tokens}


# --- Training: schedule, loss, validation, evaluation, logging
def lr_at(iteration: int, args: Args) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if iteration < args.warmup_iterations:
        return args.lr * (iteration + 1) / args.warmup_iterations
    progress = min(1.0, (iteration - args.warmup_iterations) / max(1, args.iterations - args.warmup_iterations))
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def loss_and_accuracy(model: nn.Module, inputs: dict, targets: torch.Tensor, autocast) -> tuple:
    """Cross-entropy (in float32) and action accuracy, as tensors: `.item()` waits for the GPU."""
    with autocast:
        logits = model(**inputs)
    loss = F.cross_entropy(logits.float().reshape(-1, K.NUM_ACTIONS), targets.reshape(-1))
    return loss, (logits.argmax(-1) == targets).float().mean()


@torch.no_grad()
def validation_loss(model: nn.Module, data: WindowSampler, batch_size: int, seed: int, autocast) -> tuple:
    """Loss and accuracy on the same validation windows every time (drawn from a generator seeded by `seed`), without
    dropout; the model goes back to training."""
    model.eval()
    inputs, targets = data.sample(batch_size, torch.Generator().manual_seed(seed))
    loss, accuracy = loss_and_accuracy(model, inputs, targets, autocast)
    model.train()
    return loss.item(), accuracy.item()


def evaluate_in_context(model: DecisionModel, tasks: np.ndarray, args: Args, size: int, device: torch.device) -> float:
    """The model acting in context on validation `tasks` for `--eval-steps`: per env the mean return of its last
    quarter of episodes (after what it learned in context), then the mean over envs."""
    episodes = rollout(model, tasks, args.eval_steps, size, args.seed, device)["episodes"]
    means = []
    for env in range(len(tasks)):
        returns = episodes["return"][episodes["env"] == env]
        means.append(returns[-max(1, len(returns) // 4) :].mean() if len(returns) else 0.0)
    return float(np.mean(means))


def log_training(
    writer: SummaryWriter, iteration: int, loss: float, accuracy: float, lr: float, per_second: float, tokens: int
) -> None:
    """TensorBoard points of the training loss and speed; `tokens` per iteration."""
    writer.add_scalar("losses/train_loss", loss, iteration)
    writer.add_scalar("charts/accuracy", accuracy, iteration)
    writer.add_scalar("charts/learning_rate", lr, iteration)
    writer.add_scalar("charts/iterations_per_second", per_second, iteration)
    writer.add_scalar("charts/tokens_per_second", per_second * tokens, iteration)


# --- The training script
def main(args: Args) -> dict:
    validate(args, torchrun_world_size())
    device, rank, world_size = setup_processes(args)
    master = rank == 0  # rank 0 alone prints, logs, evaluates and writes the checkpoint
    # each process its own dropout stream; rank 0's initial model is the one-process model (DDP copies it to all)
    random.seed(args.seed + rank)
    np.random.seed(args.seed + rank)
    torch.manual_seed(args.seed + rank)

    # 1. inputs and outputs, every check before any work
    obs = "light" if args.light_obs else "dark"
    path = os.path.join(
        args.data_dir, "checkpoints", f"{args.exp_name}__{args.dataset}__{obs}__ctx{args.context}__{args.seed}.pt"
    )
    folder = os.path.join(args.data_dir, args.dataset)
    runs, meta = load_dataset(
        folder, args.light_obs, args.history_steps, args.context, args.arrival_token, args.episode_stride
    )
    size = meta["size"]
    train_runs, val_runs = split_runs(runs, args.val_fraction, args.seed)
    train_data = WindowSampler(train_runs, args.context, meta["obs_scale"], device)
    val_data = None  # a validation loss needs a held-out run as long as the context
    if val_runs and max(len(run["actions"]) for run in val_runs) >= args.context:
        val_data = WindowSampler(val_runs, args.context, meta["obs_scale"], device)
    if master:  # the first line: a user who meant another grid or data sees it at once
        read = "Light observations" if args.light_obs else "Dark observations"
        if meta["data_obs_dim"] == K.LIGHT_OBS_DIM and not args.light_obs:
            read += " (Light data read Dark)"
        print(f"{folder}: {size}x{size} grid, {read}, {len(runs)} runs, {train_data.tokens:,} training tokens")
    eval_tasks = K.eval_tasks(size, "validation", args.eval_envs, args.seed) if args.eval_every else None
    if master:  # the inputs read, the outputs proved (last: a run refused for its data creates nothing)
        K.check_writable(path)
        K.check_writable("runs/")  # TensorBoard

    # from here on this run alone writes the checkpoint (rank 0 holds its lock), Ctrl-C and SIGTERM save one after the
    # iteration in flight, and a model or batch no memory holds is PyTorch's error as one line naming the flags
    held = K.lock(path) if master else contextlib.nullcontext()
    with held, StopOnSignal(world_size) as stop, out_of_memory_names_flags(args):
        # 2. the model, and the checkpoint to resume from
        shared = {field.name: getattr(args, field.name) for field in fields(ModelConfig) if hasattr(args, field.name)}
        model_config = ModelConfig(obs_dim=meta["obs_dim"], arrival=args.arrival_token, **shared)
        model = DecisionModel(model_config).to(device)
        optimizer = model.optimizer(args.lr, args.weight_decay, device)
        # the windows: one stream, the same in every process
        generator = torch.Generator().manual_seed(args.seed * 7919)
        # the data the windows are drawn from (ad_eval.py reads the dataset, its grid and the observation features)
        data_info = {
            "dataset": args.dataset,
            "size": size,
            "light_obs": args.light_obs,
            "obs_dim": meta["obs_dim"],
            "history_steps": args.history_steps,
            "episode_stride": args.episode_stride,
            "val_fraction": args.val_fraction,
            "fingerprint": meta["fingerprint"],  # which histories: their names and contents
        }
        run_name = f"KeyDoor-{obs.title()}-{size}x{size}__{args.exp_name}__{args.seed}__{int(time.time())}"
        fixed = {"args": asdict(args), "model_config": asdict(model_config), "data": data_info, "run_name": run_name}
        start = 0
        if os.path.exists(path):
            checkpoint = load_checkpoint(path)  # on the CPU, where the generator states are restored from
            check_resume(path, checkpoint, args, data_info)
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])  # the moments go to the device of the parameters
            restore_rng_state(checkpoint["rng"], generator, device, rank)
            start = checkpoint["iteration"]
            fixed["run_name"] = checkpoint["run_name"]  # the same TensorBoard run goes on
            if master:
                print(f"resuming {path} at iteration {start}")
            # the same batches; the dropout draws of the ranks it holds no state for
            if master and len(checkpoint["rng"]["torch"]) != world_size:
                print(
                    f"{path} was written by {len(checkpoint['rng']['torch'])} processes, this run has {world_size}: "
                    "other dropout draws"
                )
        step_model = training_model(model, args.compile, device, world_size)

        # 3. the training loop
        writer = None
        if master:
            writer = SummaryWriter(os.path.join("runs", fixed["run_name"]))
            table = "\n".join(f"|{key}|{value}|" for key, value in asdict(args).items())
            writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table)
            processes = f" x {world_size} processes" if world_size > 1 else ""
            print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters on {device}{processes}")
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
        stats = {}
        loop_start = time.time()
        last_log_time = loop_start
        last_log_iteration = start
        bar = tqdm(
            range(start, args.iterations), initial=start, total=args.iterations, disable=not (master and args.progress)
        )
        for iteration in bar:
            # the AD update: next-action cross-entropy on a batch of windows of learning histories
            lr = lr_at(iteration, args)
            for group in optimizer.param_groups:  # decayed and not: one schedule
                group["lr"] = lr
            inputs, targets = train_data.sample(args.batch_size, generator, rank, world_size)
            loss, accuracy = loss_and_accuracy(step_model, inputs, targets, autocast)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)  # at once, as nanoGPT: no gradient lives on through the next forward
            completed = iteration + 1
            last = completed == args.iterations

            if completed % args.log_every == 0 or last:  # .item() waits for the GPU: only here
                both = torch.stack([loss.detach(), accuracy])  # one transfer; under torchrun one all-reduce
                train_loss, train_accuracy = mean_over_processes(both, world_size).tolist()
                stats.update(train_loss=train_loss, accuracy=train_accuracy)
                now = time.time()
                per_second = (completed - last_log_iteration) / (now - last_log_time)
                last_log_time = now
                last_log_iteration = completed
                if master:
                    log_training(
                        writer, completed, train_loss, train_accuracy, lr, per_second, args.batch_size * args.context
                    )
                    bar.set_postfix(loss=f"{train_loss:.3f}", acc=f"{train_accuracy:.2f}")

            if master and val_data is not None and (completed % args.val_every == 0 or last):
                val_loss, val_accuracy = validation_loss(model, val_data, args.batch_size, args.seed, autocast)
                stats["val_loss"] = val_loss
                writer.add_scalar("losses/val_loss", val_loss, completed)
                writer.add_scalar("charts/val_accuracy", val_accuracy, completed)

            if master and args.eval_every and (completed % args.eval_every == 0 or last):
                stats["eval_return"] = evaluate_in_context(model, eval_tasks, args, size, device)
                writer.add_scalar("eval/return", stats["eval_return"], completed)

            # every iteration, in every process: the other ranks wait here while rank 0 validates and evaluates
            received = stop.requested()
            if completed % args.save_every == 0 or last or received:
                if not all(torch.isfinite(p).all() for p in model.parameters()):  # never over the last good checkpoint
                    raise ValueError(
                        f"training diverged: non-finite weights at iteration {completed}; {path} keeps the last "
                        "checkpoint saved before, if any (lower --lr or --max-grad-norm)"
                    )
                save_checkpoint(path, model, optimizer, completed, fixed, generator, device, rank, world_size)
            if received and not last:
                wait_for_all(device, world_size)  # rank 0's checkpoint is on disk before any process exits
                shut_down(writer, bar)
                if master:
                    print(
                        f"{signal.Signals(received).name}: {path} saved at iteration {completed}; rerun the command "
                        "to resume",
                        file=sys.stderr,
                    )
                raise SystemExit(128 + received)

    shut_down(writer, bar)
    if master:  # what the next command needs
        print(f"saved {path} (iteration {args.iterations}); evaluate it with: python ad_eval.py --checkpoints {path}")
    stats["iterations_per_second"] = max(0, args.iterations - start) / (time.time() - loop_start)
    return {"checkpoint": path, **stats}


# --- Checkpoints: what a resume restores bit for bit, and what ad_eval.py rebuilds the model from
# the writer and its layout: another script's checkpoint, or another layout's, is refused, not misread
CHECKPOINT_VERSION = "ad_train.py/2"  # 2: the histories' fingerprint in "data"
# the flags that set the windows, the model and the optimizer: a resume keeps them (the dataset, its observations,
# the context and the seed are in the checkpoint's name; --iterations may grow)
RESUME_ARGS = (
    "history_steps",
    "episode_stride",
    "val_fraction",
    "n_layer",
    "n_head",
    "n_embd",
    "d_ff",
    "dropout",
    "attn_dropout",
    "arrival_token",
    "batch_size",
    "lr",
    "warmup_iterations",
    "weight_decay",
    "max_grad_norm",
)


def rng_state(generator: torch.Generator, device: torch.device) -> dict:
    """This process's generators, as CPU byte tensors: the window sampler's, and the global ones dropout draws from."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.empty(0, dtype=torch.uint8)
    return {"sampler": generator.get_state(), "torch": torch.get_rng_state(), "cuda": cuda}


def restore_rng_state(states: dict, generator: torch.Generator, device: torch.device, rank: int = 0) -> None:
    """Set the generators as a checkpoint's "rng" holds them (as `load_checkpoint` returns it), so that the run goes
    on as if never stopped: the sampler's (the same in every process) and this rank's global torch and CUDA ones.
    They are CPU byte tensors, the only kind `set_state` takes. A rank the checkpoint holds no states for (it was
    written by fewer processes) keeps its own seeded dropout stream."""
    generator.set_state(states["sampler"])
    if rank < len(states["torch"]):
        torch.set_rng_state(states["torch"][rank])
    if device.type == "cuda" and rank < len(states["cuda"]) and len(states["cuda"][rank]):
        torch.cuda.set_rng_state(states["cuda"][rank], device)


def save_checkpoint(
    path: str,
    model: DecisionModel,
    optimizer: torch.optim.Optimizer,
    iteration: int,
    fixed: dict,
    generator: torch.Generator,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> None:
    """Rank 0 writes the checkpoint, atomically: a kill leaves the previous one whole. Under torchrun every process
    first sends it its global generator states (a collective: every rank calls this), a list indexed by rank, so
    that each rank resumes its own dropout stream."""
    own = rng_state(generator, device)
    states = [own]
    if world_size > 1:
        states = [None] * world_size
        dist.all_gather_object(states, own)
    if rank != 0:
        return
    checkpoint = {
        "version": CHECKPOINT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "iteration": iteration,
        "rng": {
            "sampler": own["sampler"],
            "torch": [state["torch"] for state in states],
            "cuda": [state["cuda"] for state in states],
        },
        **fixed,
    }
    K.atomic_write(path, lambda file: torch.save(checkpoint, file))


def load_checkpoint(path: str) -> dict:
    """A checkpoint this script wrote, on the CPU (the generator states above all: `set_state` takes only CPU byte
    tensors). PyTorch checks it: its weights load strictly into the model its config builds. Any other file is a
    one-line ValueError naming `path`."""
    checkpoint = None
    try:
        # opened without waiting for a writer: a FIFO named like a checkpoint reads empty (refused) rather than hang
        with open(path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK)) as file:
            checkpoint = torch.load(file, map_location="cpu", weights_only=True)
        if checkpoint["version"] != CHECKPOINT_VERSION:
            raise ValueError(f"format {checkpoint['version']}, this ad_train.py reads {CHECKPOINT_VERSION}")
        model_from_checkpoint(checkpoint)  # strict: exactly the weights, in their shapes, of its model_config's model
    except FileNotFoundError:
        raise
    except Exception as e:
        what = "not a readable checkpoint" if checkpoint is None else "not a checkpoint of this version of ad_train.py"
        reason = " ".join(str(e).split())  # one line, whatever PyTorch said
        raise ValueError(f"{path}: {what} ({type(e).__name__}: {reason})") from None
    return checkpoint


def model_from_checkpoint(checkpoint: dict) -> DecisionModel:
    model = DecisionModel(ModelConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    return model


# --- Processes: torchrun, signals, memory
def torchrun_world_size() -> int:
    """The number of processes torchrun started (it sets WORLD_SIZE); 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup_processes(args: Args) -> tuple[torch.device, int, int]:
    """(device, rank, world size). Under torchrun one process per GPU, cuda:LOCAL_RANK, joined by NCCL (on CPUs, by
    gloo); without it one process, on CUDA if there is one and --cuda."""
    cuda = args.cuda and torch.cuda.is_available()
    if "WORLD_SIZE" not in os.environ:
        return torch.device("cuda" if cuda else "cpu"), 0, 1
    if cuda:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return device, dist.get_rank(), dist.get_world_size()


def training_model(model: DecisionModel, compile: bool, device: torch.device, world_size: int) -> nn.Module:
    """The model the training step runs: compiled with --compile and, under torchrun, wrapped in DDP, which averages
    the gradients over the processes during backward. Validation and evaluation run `model` itself."""
    step_model = model
    if compile:
        # CUDA graphs (reduce-overhead) replay one process's launch-bound step; under DDP the default mode, as
        # nanoGPT compiles it (the gradient all-reduce runs between the graphs); on the CPU it fuses kernels
        mode = "reduce-overhead" if device.type == "cuda" and world_size == 1 else "default"
        step_model = torch.compile(step_model, mode=mode, dynamic=False)  # one shape: one graph
    if world_size > 1:
        step_model = DistributedDataParallel(step_model, device_ids=[device.index] if device.type == "cuda" else None)
    return step_model


def mean_over_processes(values: torch.Tensor, world_size: int) -> torch.Tensor:
    """The mean of `values` over the torchrun processes, each holding its share's: the global batch's values.
    `values` becomes their sum."""
    if world_size == 1:
        return values
    dist.all_reduce(values)  # a sum, in place: gloo has no average
    return values / world_size


def wait_for_all(device: torch.device, world_size: int) -> None:
    """A barrier of the torchrun processes (nothing with one process)."""
    if world_size > 1:
        dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)


class StopOnSignal:
    """Within `with`, SIGINT (Ctrl-C), SIGTERM (kill, a SLURM time limit, torchrun's shutdown) and SIGHUP (a closed
    terminal) only set a flag: the loop finishes the iteration in flight, saves a checkpoint and exits with 128 + the
    signal's number (130, 143, 129, as a shell reports a process the signal killed), and a rerun resumes there bit
    for bit. A second signal
    stops at once (the checkpoints on disk stay whole: they are written atomically). Under torchrun the processes
    agree on the flag every iteration, over gloo on the host (no wait for the GPU), so that all stop together."""

    def __init__(self, world_size: int):
        self.received = 0  # the signal's number, 0 while none came
        self.previous = {}
        self.group = dist.new_group(backend="gloo") if world_size > 1 else None

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():  # Python runs signal handlers there only
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal closed
                self.previous[signum] = signal.signal(signum, self.catch)
        return self

    def __exit__(self, *exception) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def catch(self, signum: int, frame) -> None:
        if self.received:
            raise KeyboardInterrupt
        self.received = signum

    def requested(self) -> int:
        """The signal this process, or under torchrun any process, received (0: none): the same in every process."""
        if self.group is None:
            return self.received
        flag = torch.tensor([self.received])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return int(flag.item())


def shut_down(writer: SummaryWriter | None, bar: tqdm) -> None:
    """The end of a run: the progress bar, the TensorBoard file and the torchrun process group closed."""
    bar.close()
    if writer is not None:
        writer.close()
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def out_of_memory_names_flags(args: Args):
    """PyTorch's out-of-memory error (CUDA's, or the CPU allocator's RuntimeError) as one line naming the flags that
    size what training holds: a batch's activations and the model's weights with AdamW's two moments."""
    try:
        yield
    except RuntimeError as e:  # torch.OutOfMemoryError is one
        if not isinstance(e, torch.OutOfMemoryError) and "can't allocate memory" not in str(e):
            raise
        raise ValueError(
            f"out of memory ({type(e).__name__}) with --batch-size {args.batch_size:,} and --context {args.context:,}: "
            f"lower --batch-size or --context, or the model's --n-embd {args.n_embd:,}, --d-ff or --n-layer"
        ) from None


# --- Checks: flags, held-out tasks, a resume's settings
def validate(args: Args, world_size: int = 1) -> None:
    """Every flag's range, each on its own, before any work."""
    at_least_one = [
        "context",
        "iterations",
        "batch_size",
        "n_layer",
        "n_head",
        "n_embd",
        "d_ff",
        "log_every",
        "save_every",
        "val_every",
        "warmup_iterations",
    ]
    if args.eval_every:
        at_least_one += ["eval_envs", "eval_steps"]
    # first: the table below divides by some of these
    K.check_flags(
        [
            (getattr(args, name) >= 1, f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
            for name in at_least_one
        ]
    )
    K.check_flags(
        [
            (args.n_embd % args.n_head == 0, f"--n-embd {args.n_embd} must be a multiple of --n-head {args.n_head}"),
            (args.history_steps >= -1, f"--history-steps must be >= -1, got {args.history_steps}"),
            (args.episode_stride >= 1, f"--episode-stride must be >= 1, got {args.episode_stride}"),
            (args.eval_every >= 0, f"--eval-every must be >= 0, got {args.eval_every}"),
            (0 <= args.dropout < 1, f"--dropout must be a finite number in [0, 1), got {args.dropout}"),  # NaN fails
            (
                args.attn_dropout is None or 0 <= args.attn_dropout < 1,
                f"--attn-dropout must be None or a finite number in [0, 1), got {args.attn_dropout}",
            ),
            (0 < args.lr < math.inf, f"--lr must be a finite number > 0, got {args.lr}"),
            (
                0 <= args.weight_decay < math.inf,
                f"--weight-decay must be a finite number >= 0, got {args.weight_decay}",
            ),
            (
                0 < args.max_grad_norm < math.inf,
                f"--max-grad-norm must be a finite number > 0, got {args.max_grad_norm}",
            ),
            (0 <= args.val_fraction < 1, f"--val-fraction must be a finite number in [0, 1), got {args.val_fraction}"),
            (0 <= args.seed < 2**32, f"--seed must lie in [0, 2**32), got {args.seed}"),  # numpy's seeds
            (
                args.batch_size % world_size == 0,
                f"--batch-size {args.batch_size} must be a multiple of the {world_size} torchrun processes "
                "(each trains on an equal share of every batch)",
            ),
        ]
    )


def check_train_tasks(tasks: np.ndarray, size: int, path: str) -> None:
    """Refuse a history that holds a task outside the train split: training on a held-out task would leak the tasks
    the evaluation reports on. Collection keeps to the train split; this catches data from elsewhere, or a bug."""
    grid = (size, size, size, size)
    train = np.ravel_multi_index(K.task_split(size, "train").T, grid)  # one integer per task
    outside = ~np.isin(np.ravel_multi_index(tasks.T, grid), train)  # (T,)
    if not outside.any():
        return
    task = tasks[np.argmax(outside)]
    for split in ("validation", "test"):
        if (K.task_split(size, split) == task).all(axis=1).any():
            raise ValueError(
                f"{path} holds task {task.tolist()}, a held-out ({split}) task of the {size}x{size} grid: "
                "training on it would leak the evaluation tasks"
            )
    raise ValueError(f"{path} holds task {task.tolist()}, which is no task of the {size}x{size} grid's train split")


def setting(key: str, value) -> str:
    """A recorded setting as the command line says it: "--lr 0.001", "--no-arrival-token"."""
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else "--no-" + flag[2:]
    return f"{flag} {value}"


def check_resume(path: str, checkpoint: dict, args: Args, data_info: dict) -> None:
    """Refuse to resume a checkpoint under other settings, in one line naming the first that changed: the run would
    no longer be the one its name and hyperparameter table say. `data_info`: this run's data, its fingerprint too."""
    # runs added, removed or changed; another grid; an exported model without its training state (none recorded)
    if checkpoint["data"].get("fingerprint") != data_info["fingerprint"]:
        raise ValueError(
            f"{path} was trained on other histories than --dataset {args.dataset} holds now (runs added, removed or "
            "changed, or a checkpoint copied from another data folder), or was saved for evaluation only; move it "
            "away or change --exp-name"
        )
    if checkpoint["iteration"] > args.iterations:  # it would say "resuming" and train nothing
        raise ValueError(
            f"{path} has trained {checkpoint['iteration']} iterations, more than --iterations {args.iterations}; "
            "pass at least as many, or change --exp-name"
        )
    for key in RESUME_ARGS:
        trained = checkpoint["args"].get(key)  # a flag newer than the checkpoint: None, its default, as trained
        now = getattr(args, key)
        if trained != now:
            now_setting = setting(key, now) if isinstance(now, bool) else now
            raise ValueError(
                f"{path} was trained with {setting(key, trained)}, not {now_setting}; move it away or change --exp-name"
            )


if __name__ == "__main__":
    K.run_cli(main, Args)
