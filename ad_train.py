"""Algorithm Distillation: a causal Transformer trained on learning histories to predict the next action.

    python ad_train.py --context 200                      # AD on Nx1 histories read Dark (data/nx1-light)
    python ad_train.py --context 200 --light-obs          # AD on Light data
    python ad_train.py --dataset 1xn-dark --context 2 --history-steps 0   # BC on whole 1xN histories

A token per timestep embeds (o_t, a_{t-1}, r_{t-1}, d_{t-1}); the model predicts a_t at every position of a window
of `--context` steps of one history, across episodes. The checkpoint holds all `ad_eval.py` needs; rerunning the
command resumes it, bit for bit. `rollout()`, beside the model as nanoGPT keeps `generate()`, runs a model in context
on new tasks. `--arrival-token` adds p_{t-1}, the cell the previous action led to (the door's is in no o_t).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
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
    context: int = 200
    """window length in timesteps (the model's context)"""
    history_steps: int = -1
    """windows from the first N steps of each history; -1: twice the step where it first averages 1.8; 0: all"""
    episode_stride: int = 1
    """keep every k-th episode of each history (after --history-steps), so a window spans k times more learning"""
    arrival_token: bool = False
    """add to each token the cell the previous action led to (the door's cell at an episode's end)"""
    n_layer: int = 4
    """Transformer blocks"""
    n_head: int = 4
    """attention heads"""
    n_embd: int = 128
    """embedding width"""
    d_ff: int = 768
    """feed-forward width"""
    dropout: float = 0.1
    """dropout in embeddings, attention output and feed-forward"""
    batch_size: int = 64
    """windows per iteration"""
    iterations: int = 10_000
    """training iterations, one gradient update each"""
    lr: float = 3e-4
    """peak learning rate"""
    warmup_iterations: int = 500
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
    """iterations between checkpoints"""
    seed: int = 1
    """seed of python, numpy and torch"""
    exp_name: str = "ad"
    """experiment name, in the run and checkpoint names"""
    cuda: bool = True
    """use CUDA when available"""
    compile: bool = False
    """torch.compile the model (on CUDA with CUDA graphs: mode reduce-overhead)"""
    progress: bool = True
    """show a progress bar"""


# --- Data: every history in memory once, in compact dtypes, on the training device
# A history's first token is built like any episode's first (previous action "stay", reward 0, done 1, arrival (0, 0)).
FIRST_PREV_ACTION, FIRST_PREV_DONE, FIRST_PREV_ARRIVAL = 0, 1, (0, 0)


def load_dataset(
    folder: str,
    light_obs: bool,
    history_steps: int = 0,
    min_steps: int = 1,
    arrival: bool = False,
    episode_stride: int = 1,
):
    """Every `.npz` history of `folder` -> `(runs, meta)`: per run `select_steps`'s arrays with the observations
    as `obs_codes` uint8 (T, D) (and `prev_arrivals` with `arrival`); meta holds size, obs_dim, obs_scale."""
    runs, first, obs_dim = [], None, K.LIGHT_OBS_DIM if light_obs else K.DARK_OBS_DIM
    for path in K.history_paths(folder):
        history, history_config = K.load_history(path)
        name, dim, size = os.path.basename(path), history["observations"].shape[1], history_config.get("size")
        first = first or (name, dim, size)
        if size is None or (dim, size) != first[1:]:
            raise ValueError(
                f"{folder}: {first[0]} has {first[1]} observation features on a {first[2]}x{first[2]} "
                f"grid, {name} has {dim} on {size}x{size}: one dataset, one layout"
            )
        if light_obs and dim != K.LIGHT_OBS_DIM:
            raise ValueError(f"--light-obs needs Light data, but {path} holds Dark observations")
        if arrival:
            history["arrivals"] = arrival_cells(history, size, path)
        run = select_steps(history, history_steps, min_steps, episode_stride)
        scale = K.obs_scale(size, obs_dim)
        observations = run.pop("observations")[:, :obs_dim]  # Light read Dark: drop the 4 task features
        run["obs_codes"] = np.rint(observations * scale).astype(np.uint8)
        if not np.array_equal(run["obs_codes"].astype(np.float32) / scale, observations):  # as `gather` decodes
            raise ValueError(f"{folder}: observations are not on the {size}x{size} grid of the contract")
        runs.append(run)
    return runs, {"size": size, "obs_dim": obs_dim, "obs_scale": scale.tolist()}


def arrival_cells(history: dict, size: int, name: str) -> np.ndarray:
    """The cell (x, y) each action led to, uint8 (T, 2): the position moved by the action, clipped at the border;
    checked against the next observations and doors, so that other dynamics fail here, not teach wrong cells."""
    cells = np.rint(history["observations"][:, :2] * (size - 1)).astype(np.int64)  # (T, 2)
    moved = np.clip(cells + K.ACTION_DELTAS[history["actions"]], 0, size - 1)
    going_on, opened = ~(history["terminations"] | history["truncations"])[:-1], history["terminations"]
    if not (
        np.array_equal(moved[:-1][going_on], cells[1:][going_on])
        and np.array_equal(moved[opened], history["tasks"][opened, 2:])
    ):
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
        "prev_rewards": np.concatenate([[0], history["rewards"][kept][:-1]]).astype(np.uint8),
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
        return [{k: v[:cut] for k, v in runs[0].items()}], [{k: v[cut:] for k, v in runs[0].items()}]
    order = np.random.default_rng(seed).permutation(len(runs))
    num_val = min(len(runs) - 1, int(math.ceil(val_fraction * len(runs))))
    return [runs[i] for i in order[num_val:]], [runs[i] for i in order[:num_val]]


class WindowSampler:
    """All runs' arrays as flat (tokens, ...) tensors on the device; the host draws only a batch's start indices."""

    def __init__(self, runs: list[dict], context: int, obs_scale: list[float], device: torch.device):
        lengths = np.array([len(r["actions"]) for r in runs])
        usable = lengths >= context
        if not usable.any():
            raise ValueError(f"--context {context} is longer than every history (longest {lengths.max()} steps)")
        self.device, self.tokens = device, int(lengths.sum())
        self.offsets = torch.as_tensor(np.concatenate([[0], np.cumsum(lengths)[:-1]])[usable])
        self.num_starts = torch.as_tensor(lengths[usable] - context + 1)  # window starts per run
        self.arrays = {key: torch.as_tensor(np.concatenate([r[key] for r in runs])).to(device) for key in runs[0]}
        self.obs_scale, self.positions = torch.tensor(obs_scale, device=device), torch.arange(context, device=device)

    def sample(self, batch_size: int, generator: torch.Generator):
        """A batch of windows: (inputs dict of (B, C, ...) tensors, targets (B, C) int64), runs uniform."""
        run = torch.randint(len(self.offsets), (batch_size,), generator=generator)
        first = self.offsets[run] + (torch.rand(batch_size, generator=generator) * self.num_starts[run]).long()  # (B,)
        first = first.pin_memory() if self.device.type == "cuda" else first  # then the copy need not wait for the GPU
        return self.gather(first.to(self.device, non_blocking=True)[:, None] + self.positions)

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
class ModelConfig:  # built from `Args` by field name in `main`: the defaults live once, in `Args`
    obs_dim: int
    context: int
    n_layer: int
    n_head: int
    n_embd: int
    d_ff: int
    dropout: float
    arrival: bool  # tokens carry p_{t-1}, the (x, y) the previous action led to (--arrival-token)


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head, self.dropout, self.context = config.n_head, config.dropout, config.context
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
                cache["v"], cache["len"] = torch.empty_like(cache["k"]), 0
            end = cache["len"] + T
            # several new tokens over cached ones would need a block-causal mask, which rollout never needs
            assert end <= self.context and (cache["len"] == 0 or T == 1), f"KV cache misuse: {cache['len']} + {T}"
            cache["k"][:, :, cache["len"] : end], cache["v"][:, :, cache["len"] : end] = k, v
            k, v, cache["len"] = cache["k"][:, :, :end], cache["v"][:, :, :end], end
        # causal over a window from its start; one token after a filled cache sees all of it
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=k.shape[2] == T, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj_dropout(self.proj(y.transpose(1, 2).reshape(B, T, E)))


class Block(nn.Module):
    """Pre-norm Transformer block."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(config.n_embd), nn.LayerNorm(config.n_embd)
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
        positions = torch.arange(T, device=observations.device) if positions is None else positions
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
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=device.type == "cuda")


# --- In-context rollout: the model acts on new tasks from its own history, with no gradient step
def window_starts(steps: int, context: int) -> np.ndarray:
    """Start of the window the prediction at step t is made on. Position embeddings are learned, so a window
    cannot slide on a KV cache: it grows to `context` tokens, then restarts from the last context//2."""
    period, t = context + 1 - max(1, context // 2), np.arange(steps)  # a refill every `period` steps after the first
    return np.where(t < context, 0, ((t - context) // period + 1) * period)


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
    full_recompute: bool = False,
    progress: bool = False,
    desc: str = "",
) -> dict:
    """Run `model` in context on `tasks` (N, 4) for `steps` env steps each, the same task after every reset, in one
    batch on `device` (the env too: no host round trip per step), sampling with a generator seeded by `seed`.
    `full_recompute` is the KV cache's reference. Returns "episodes" (env, return, end_step) and the "tokens" fed."""
    was_training, config, N = model.training, model.config, len(tasks)
    model.eval()
    env = K.TorchVectorEnv(tasks, size, light=config.obs_dim == K.LIGHT_OBS_DIM, device=device)
    zeros = lambda *shape, dtype=torch.float32: torch.zeros(N, steps, *shape, dtype=dtype, device=device)
    tokens = {
        "observations": zeros(config.obs_dim),
        "prev_actions": zeros(dtype=torch.long) + FIRST_PREV_ACTION,
        "prev_rewards": zeros(),
        "prev_dones": zeros(),
        "prev_arrivals": zeros(2),
    }  # first arrival: (0, 0)
    tokens["prev_dones"][:, 0] = FIRST_PREV_DONE
    rewards, dones = zeros(), zeros(dtype=torch.bool)
    starts, positions = window_starts(steps, config.context), torch.arange(config.context, device=device)
    window = lambda lo, hi: {key: value[:, lo:hi] for key, value in tokens.items()}
    generator = torch.Generator(device=device).manual_seed(seed)
    observations, caches = env.reset(), None
    for t in tqdm(range(steps), disable=not progress, desc=desc, mininterval=1.0):
        tokens["observations"][:, t] = observations
        start = int(starts[t])
        if full_recompute or t == 0 or start != starts[t - 1]:  # a new window: (re)fill the cache from its tokens
            caches = None if full_recompute else [{} for _ in model.blocks]
            logits = model(**window(start, t + 1), caches=caches)[:, -1]
        else:
            logits = model(**window(t, t + 1), positions=positions[t - start : t - start + 1], caches=caches)[:, -1]
        logits = logits.float()
        actions = logits.argmax(-1) if greedy else torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
        observations, rewards[:, t], terminations, truncations, final = env.step(actions)
        dones[:, t] = terminations | truncations
        if t + 1 < steps:
            tokens["prev_actions"][:, t + 1], tokens["prev_rewards"][:, t + 1] = actions, rewards[:, t]
            tokens["prev_dones"][:, t + 1], tokens["prev_arrivals"][:, t + 1] = dones[:, t].float(), final[:, :2]
    model.train(was_training)
    return {"episodes": K.stream_episodes(rewards.cpu().numpy(), dones.cpu().numpy()), "tokens": tokens}


# --- Training: schedule, validation, checkpoints, devices
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


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Read a checkpoint written by this script; raise ValueError if it is not one."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    keys = set(checkpoint) if isinstance(checkpoint, dict) else set()
    if missing := {"model", "optimizer", "iteration", "args", "model_config", "data", "run_name", "rng"} - keys:
        raise ValueError(f"{path}: not a checkpoint of this version of ad_train.py (missing {sorted(missing)})")
    return checkpoint


def model_from_checkpoint(checkpoint: dict) -> DecisionModel:
    model = DecisionModel(ModelConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    return model


def validate(args: Args) -> None:
    """Every flag's range, before any work."""
    positive = [
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
    ] + (["eval_envs", "eval_steps"] if args.eval_every else [])
    checks = [
        (getattr(args, name) >= 1, f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        for name in positive
    ]  # first, in this order: a later check divides by --n-head
    checks += [
        (args.n_embd % max(1, args.n_head) == 0, f"--n-embd {args.n_embd} must be a multiple of --n-head"),
        (args.history_steps >= -1, f"--history-steps must be >= -1, got {args.history_steps}"),
        (args.episode_stride >= 1, f"--episode-stride must be >= 1, got {args.episode_stride}"),
        (args.eval_every >= 0 and 0 <= args.dropout < 1, "--eval-every must be >= 0 and --dropout in [0, 1)"),
        (min(args.lr, args.max_grad_norm) > 0, "--lr and --max-grad-norm must be > 0"),
        (0 <= args.val_fraction < 1, f"--val-fraction must lie in [0, 1), got {args.val_fraction}"),
    ]
    if failed := [message for ok, message in checks if not ok]:
        raise ValueError(failed[0])


def main(args: Args) -> dict:
    validate(args)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    # 1. inputs and outputs, every check before any work
    obs, name = "light" if args.light_obs else "dark", f"{args.exp_name}__{args.dataset}"
    path = os.path.join(args.data_dir, "checkpoints", f"{name}__{obs}__ctx{args.context}__{args.seed}.pt")
    K.check_writable(os.path.dirname(path))
    K.check_writable("runs")  # TensorBoard
    K.remove_stale_parts(os.path.dirname(path))
    folder = os.path.join(args.data_dir, args.dataset)
    runs, meta = load_dataset(
        folder, args.light_obs, args.history_steps, args.context, args.arrival_token, args.episode_stride
    )
    eval_tasks = K.eval_tasks(meta["size"], "validation", args.eval_envs, args.seed) if args.eval_every else None
    train_runs, val_runs = split_runs(runs, args.val_fraction, args.seed)
    train_data = WindowSampler(train_runs, args.context, meta["obs_scale"], device)
    long_enough = val_runs and max(len(r["actions"]) for r in val_runs) >= args.context  # else no validation loss
    val_data = WindowSampler(val_runs, args.context, meta["obs_scale"], device) if long_enough else None

    # 2. the model, and the checkpoint to resume from
    shared = {f.name: getattr(args, f.name) for f in fields(ModelConfig) if hasattr(args, f.name)}
    model_config = ModelConfig(obs_dim=meta["obs_dim"], arrival=args.arrival_token, **shared)
    model = DecisionModel(model_config).to(device)
    optimizer = model.optimizer(args.lr, args.weight_decay, device)
    generator = torch.Generator().manual_seed(args.seed * 7919)
    # the model and what its windows are drawn from: a resume must not silently change them
    data_info = {
        "dataset": args.dataset,
        "size": meta["size"],
        "light_obs": args.light_obs,
        "obs_dim": meta["obs_dim"],
        "history_steps": args.history_steps,
        "episode_stride": args.episode_stride,
        "val_fraction": args.val_fraction,
    }
    run_name = f"KeyDoor-{obs.title()}-{meta['size']}x{meta['size']}__{args.exp_name}__{args.seed}__{int(time.time())}"
    fixed = {"args": asdict(args), "model_config": asdict(model_config), "data": data_info, "run_name": run_name}
    start = 0
    if os.path.exists(path):
        checkpoint = load_checkpoint(path, map_location=device)
        tuned = ("batch_size", "lr", "warmup_iterations", "weight_decay", "max_grad_norm")  # --iterations may grow
        trained = (checkpoint["model_config"], checkpoint["data"], {k: checkpoint["args"][k] for k in tuned})
        if trained != (fixed["model_config"], fixed["data"], {k: getattr(args, k) for k in tuned}):
            raise ValueError(
                f"{path} holds another model, data or optimizer {trained}; move it away or change --exp-name"
            )
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start, fixed["run_name"], states = checkpoint["iteration"], checkpoint["run_name"], checkpoint["rng"]
        generator.set_state(states["sampler"])  # the generators as they were: the run goes on as if never stopped
        torch.set_rng_state(states["torch"])
        if device.type == "cuda" and len(states["cuda"]):
            torch.cuda.set_rng_state(states["cuda"], device)
        print(f"resuming {path} at iteration {start}")
    # CUDA graphs (reduce-overhead) replay the launch-bound step; on the CPU the default mode fuses kernels
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    step_model = torch.compile(model, mode=mode, dynamic=False) if args.compile else model  # one shape: one graph

    # 3. the training loop
    writer = SummaryWriter(os.path.join("runs", fixed["run_name"]))
    writer.add_text(
        "hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items())
    )
    print(
        f"{folder}: {len(runs)} runs, {train_data.tokens:,} training tokens; model "
        f"{sum(p.numel() for p in model.parameters()):,} parameters on {device}"
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    loop_start, last_time, last_iteration, stats = time.time(), time.time(), start, {}
    bar = tqdm(range(start, args.iterations), initial=start, total=args.iterations, disable=not args.progress)
    for iteration in bar:
        for group in optimizer.param_groups:  # decayed and not: one schedule
            group["lr"] = lr = lr_at(iteration, args)
        loss, accuracy = loss_and_accuracy(step_model, *train_data.sample(args.batch_size, generator), autocast)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        completed, last = iteration + 1, iteration + 1 == args.iterations
        if completed % args.log_every == 0 or last:  # .item() waits for the GPU: only here
            stats.update(train_loss=loss.item(), accuracy=accuracy.item())
            per_second = (completed - last_iteration) / (time.time() - last_time)
            for tag, value in [
                ("losses/train_loss", stats["train_loss"]),
                ("charts/accuracy", stats["accuracy"]),
                ("charts/learning_rate", lr),
                ("charts/iterations_per_second", per_second),
                ("charts/tokens_per_second", per_second * args.batch_size * args.context),
            ]:
                writer.add_scalar(tag, value, completed)
            bar.set_postfix(loss=f"{stats['train_loss']:.3f}", acc=f"{stats['accuracy']:.2f}")
            last_time, last_iteration = time.time(), completed
        if val_data is not None and (completed % args.val_every == 0 or last):  # the same windows every time
            model.eval()
            with torch.no_grad():
                val_windows = val_data.sample(args.batch_size, torch.Generator().manual_seed(args.seed))
                stats["val_loss"], val_accuracy = (x.item() for x in loss_and_accuracy(model, *val_windows, autocast))
            model.train()
            writer.add_scalar("losses/val_loss", stats["val_loss"], completed)
            writer.add_scalar("charts/val_accuracy", val_accuracy, completed)
        if args.eval_every and (completed % args.eval_every == 0 or last):
            episodes = rollout(model, eval_tasks, args.eval_steps, meta["size"], args.seed, device)["episodes"]
            returns = [episodes["return"][episodes["env"] == i] for i in range(len(eval_tasks))]  # per env first
            stats["eval_return"] = float(
                np.mean([r[-max(1, len(r) // 4) :].mean() if len(r) else 0.0 for r in returns])
            )
            writer.add_scalar("eval/return", stats["eval_return"], completed)
        if completed % args.save_every == 0 or last:
            cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.empty(0, dtype=torch.uint8)
            # every generator an iteration draws from: the sampler's, and the global ones dropout uses
            rng = {"sampler": generator.get_state(), "torch": torch.get_rng_state(), "cuda": cuda_rng}
            checkpoint = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "iteration": completed,
                "rng": rng,
                **fixed,
            }
            K.atomic_write(path, lambda f: torch.save(checkpoint, f))
    writer.close()
    stats["iterations_per_second"] = max(0, args.iterations - start) / (time.time() - loop_start)
    return {"checkpoint": path, **stats}


if __name__ == "__main__":
    K.run_cli(main, Args)
