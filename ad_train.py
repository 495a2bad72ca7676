"""Algorithm Distillation: a causal Transformer trained on learning histories to predict the next action.

    python ad_train.py --context 200                      # AD on Nx1 histories read Dark (data/nx1-light)
    python ad_train.py --context 200 --light-obs          # AD on Light data
    python ad_train.py --dataset 1xn-dark --context 2     # BC on 1xN histories
    torchrun --nproc-per-node 4 ad_train.py --context 500 # data parallel on 4 GPUs, same code

One token per timestep embeds (o_t, a_{t-1}, r_{t-1}, d_{t-1}); the model predicts a_t at every
position of a window of `--context` consecutive timesteps of one history. Windows cross episode
boundaries, as the source agent's stream does. The checkpoint holds everything `ad_eval.py` needs
to rebuild the model; rerunning the same command resumes from it.

`--arrival-token` adds p_{t-1} to each token, the cell the previous action led to. Why: the door
ends the episode, so the door's cell is in no o_t (the next o_t is the start of the next episode),
and the model must otherwise work it out from two tokens (the last position and the action). The
histories need no extra field: on this grid with no walls the cell is the last position moved by
the action, clipped at the border, and the loader checks that against every next observation.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
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
    """windows from the first N steps of each history only; -1: twice the step where the run first averages 1.8; 0: all"""
    episode_stride: int = 1
    """keep every k-th episode of each history, so that a window spans more of the learning"""
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
    """windows per update (over all processes)"""
    updates: int = 10_000
    """gradient updates"""
    lr: float = 3e-4
    """peak learning rate"""
    warmup_updates: int = 500
    """linear warm-up of the learning rate, then cosine decay to 10%"""
    weight_decay: float = 0.1
    """AdamW weight decay, on matrices only"""
    grad_clip: float = 1.0
    """gradient norm clipping"""
    val_fraction: float = 0.05
    """share of whole runs held out for the validation loss (at least one when there are several)"""
    eval_every: int = 1000
    """updates between in-context evaluations on held-out tasks (0: never)"""
    eval_envs: int = 4
    """held-out tasks in the in-training evaluation"""
    eval_steps: int = 1000
    """env steps of the in-training evaluation"""
    log_every: int = 50
    """updates between TensorBoard points"""
    save_every: int = 500
    """updates between checkpoints"""
    seed: int = 1
    """seed of python, numpy and torch"""
    exp_name: str = "ad"
    """experiment name, in the run and checkpoint names"""
    cuda: bool = True
    """use CUDA when available"""
    compile: bool = False
    """torch.compile the model (CUDA)"""
    progress: bool = True
    """show a progress bar"""


# ----------------------------------------------------------------------------------------------
# Data: every history in memory once, in compact dtypes; windows by vectorised indexing
# ----------------------------------------------------------------------------------------------
# The first token of a history has no previous step; it is built like the first token of any later
# episode (previous action "stay", reward 0, done 1), so that no embedding is left untrained.
FIRST_PREV_ACTION, FIRST_PREV_DONE = 0, 1
FIRST_PREV_ARRIVAL = (0, 0)  # a history starts at a reset, where the agent stands on cell (0, 0)


def load_dataset(folder: str, light_obs: bool, history_steps: int = 0, episode_stride: int = 1, min_steps: int = 1,
                 arrival: bool = False):
    """Load every `.npz` history of `folder`. Returns `(runs, meta)`: per run a dict of compact arrays
    (`obs_codes` uint8 (T, D), `actions` uint8, `prev_actions` uint8, `prev_rewards` uint8,
    `prev_dones` bool, with `arrival` also `prev_arrivals` uint8 (T, 2) grid cells, and `returns` of
    its episodes), and `meta` (size, obs_dim, obs_scale)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"dataset folder {folder} does not exist; collect it first (see README)")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".npz") and not n.startswith("."))
    if not names:
        raise ValueError(f"dataset folder {folder} holds no .npz histories")
    runs, size, full_dim = [], None, None
    for name in names:
        history, config = K.load_history(os.path.join(folder, name))
        dim = history["observations"].shape[1]
        if full_dim is None:
            full_dim, size = dim, config.get("size")
        if size is None:
            raise ValueError(f"{folder}: histories do not record their grid size")
        if dim != full_dim:
            raise ValueError(f"{folder}: {names[0]} has {full_dim} observation features, {name} has {dim}")
        if config.get("size") != size:
            raise ValueError(f"{folder}: {names[0]} is a {size}x{size} grid, {name} is {config.get('size')}")
        if light_obs and dim != K.LIGHT_OBS_DIM:
            raise ValueError(f"--light-obs needs Light data, but {folder} holds Dark observations")
        if arrival:
            history["arrivals"] = arrival_cells(history, size, f"{folder}/{name}")
        runs.append(select_steps(history, history_steps, episode_stride, min_steps))
    obs_dim = K.LIGHT_OBS_DIM if light_obs else K.DARK_OBS_DIM
    scale = np.array([size - 1, size - 1, 1, K.EPISODE_STEPS] + [size - 1] * 4, dtype=np.float32)[:obs_dim]
    for run in runs:
        observations = run.pop("observations")[:, :obs_dim]  # Light read Dark: drop the 4 task features
        codes = np.rint(observations * scale)
        run["obs_codes"] = codes.astype(np.uint8)
        if not np.array_equal(decode_observations(torch.as_tensor(run["obs_codes"]), torch.as_tensor(scale)).numpy(),
                              observations):
            raise ValueError(f"{folder}: observations are not on the {size}x{size} grid of the contract")
    return runs, {"size": size, "obs_dim": obs_dim, "obs_scale": scale.tolist()}


def arrival_cells(history: dict, size: int, name: str) -> np.ndarray:
    """The cell (x, y) each action led to, uint8 (T, 2): the position moved by the action, clipped at
    the border. Checked against the next observation wherever the episode goes on, and against the
    task's door where the door ended it, so that data from another dynamics fails here rather than
    teaching the model wrong cells."""
    cells = np.rint(history["observations"][:, :2] * (size - 1)).astype(np.int64)  # (T, 2)
    moved = np.clip(cells + K.ACTION_DELTAS[history["actions"]], 0, size - 1)
    going_on = ~(history["terminations"] | history["truncations"])[:-1]
    opened = history["terminations"]
    if not (np.array_equal(moved[:-1][going_on], cells[1:][going_on])
            and np.array_equal(moved[opened], history["tasks"][opened, 2:])):
        raise ValueError(f"{name}: observations do not follow the moves of the {size}x{size} grid, "
                         "so --arrival-token cannot compute the arrival cells")
    return moved.astype(np.uint8)


def decode_observations(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """uint8 codes (..., D) -> float32 observations, exactly those of the environment."""
    return (codes.float() / scale).float()


def select_steps(history: dict, history_steps: int, episode_stride: int, min_steps: int = 1) -> dict:
    """Keep the first `history_steps` steps (-1: twice the step at which the run first solved its
    task, at least `min_steps`; 0: all) and every `episode_stride`-th episode; add the previous
    action, reward and done of each kept step (the previous *kept* step's), and, when the history
    holds "arrivals" (cells, (T, 2)), the previous arrival ("prev_arrivals"; for the first token,
    the start cell)."""
    steps = len(history["actions"])
    keep = np.ones(steps, dtype=bool)
    dones = history["terminations"] | history["truncations"]
    if history_steps < 0:  # concentrate windows on the learning phase of this run
        solved = K.first_solved_step(history["rewards"], dones)
        history_steps = steps if solved is None else max(2 * solved, min_steps)
    if history_steps > 0:
        keep[history_steps:] = False
    if episode_stride > 1:
        episode = np.concatenate([[0], np.cumsum(dones)[:-1]])  # episode index of each step
        keep &= episode % episode_stride == 0
    actions = history["actions"][keep].astype(np.uint8)
    rewards = history["rewards"][keep]
    kept_dones = dones[keep]
    returns, _ = K.episode_returns(history["rewards"], dones)
    run = {"observations": history["observations"][keep], "actions": actions,
           "prev_actions": np.concatenate([[FIRST_PREV_ACTION], actions[:-1]]).astype(np.uint8),
           "prev_rewards": np.concatenate([[0], rewards[:-1]]).astype(np.uint8),
           "prev_dones": np.concatenate([[FIRST_PREV_DONE], kept_dones[:-1]]).astype(bool),
           "returns": returns}
    if "arrivals" in history:
        arrivals = history["arrivals"][keep]
        run["prev_arrivals"] = np.concatenate([[FIRST_PREV_ARRIVAL], arrivals[:-1]]).astype(np.uint8)
    return run


class WindowSampler:
    """All runs concatenated into flat tensors; a batch of windows is one gather."""

    def __init__(self, runs: list[dict], context: int, obs_scale: list[float], device: torch.device):
        lengths = np.array([len(r["actions"]) for r in runs])
        usable = lengths >= context
        if not usable.any():
            raise ValueError(f"--context {context} is longer than every history (longest {lengths.max()} steps)")
        self.context, self.device = context, device
        self.offsets = torch.as_tensor(np.concatenate([[0], np.cumsum(lengths)[:-1]])[usable])
        self.num_starts = torch.as_tensor(lengths[usable] - context + 1)  # window starts per run
        cat = lambda key: torch.as_tensor(np.concatenate([r[key] for r in runs]))
        self.obs_codes, self.actions = cat("obs_codes"), cat("actions")
        self.prev_actions, self.prev_rewards, self.prev_dones = cat("prev_actions"), cat("prev_rewards"), cat("prev_dones")
        self.prev_arrivals = cat("prev_arrivals") if "prev_arrivals" in runs[0] else None  # (tokens, 2) cells
        self.obs_scale = torch.tensor(obs_scale)
        self.tokens = int(lengths.sum())

    def sample(self, batch_size: int, generator: torch.Generator):
        """A batch of windows: (inputs dict of (B, C, ...) tensors, targets (B, C) int64), runs uniform."""
        run = torch.randint(len(self.offsets), (batch_size,), generator=generator)
        start = (torch.rand(batch_size, generator=generator) * self.num_starts[run]).long()
        index = (self.offsets[run] + start)[:, None] + torch.arange(self.context)  # (B, C)
        return self.gather(index)

    def gather(self, index: torch.Tensor):
        inputs = {"observations": decode_observations(self.obs_codes[index], self.obs_scale),
                  "prev_actions": self.prev_actions[index].long(),
                  "prev_rewards": self.prev_rewards[index].float(),
                  "prev_dones": self.prev_dones[index].float()}
        if self.prev_arrivals is not None:  # cells scaled as the observation's positions
            inputs["prev_arrivals"] = self.prev_arrivals[index].float() / self.obs_scale[0]
        return ({k: v.to(self.device, non_blocking=True) for k, v in inputs.items()},
                self.actions[index].long().to(self.device, non_blocking=True))


# ----------------------------------------------------------------------------------------------
# The model (nanoGPT-style)
# ----------------------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    obs_dim: int = 4
    context: int = 200
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    d_ff: int = 768
    dropout: float = 0.1
    arrival: bool = False  # tokens carry p_{t-1}, the (x, y) the previous action led to


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head, self.dropout, self.context = config.n_head, config.dropout, config.context
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.proj_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: Optional[dict] = None) -> torch.Tensor:
        """x (B, T, E). With `cache` (a dict holding this layer's "k", "v" of earlier positions), the
        T new tokens attend to the cached ones and the cache grows by T."""
        B, T, E = x.shape
        q, k, v = self.qkv(x).split(E, dim=2)
        q, k, v = (t.view(B, T, self.n_head, E // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        if cache is not None:  # preallocated to the context: one in-place write per step, no copy
            if "k" not in cache:
                cache["k"] = k.new_empty(B, self.n_head, self.context, E // self.n_head)
                cache["v"], cache["len"] = torch.empty_like(cache["k"]), 0
            end = cache["len"] + T
            if end > self.context:
                raise ValueError(f"KV cache overflow: {end} tokens for a context of {self.context}")
            cache["k"][:, :, cache["len"]:end], cache["v"][:, :, cache["len"]:end] = k, v
            k, v, cache["len"] = cache["k"][:, :, :end], cache["v"][:, :, :end], end
        past = k.shape[2] - T
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        elif T == 1:  # one new token sees everything cached
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        else:  # new tokens see every cached token and the causal part of their own block
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.proj_dropout(self.proj(y.transpose(1, 2).reshape(B, T, E)))


class Block(nn.Module):
    """Pre-norm Transformer block."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(config.n_embd), nn.LayerNorm(config.n_embd)
        self.attn = SelfAttention(config)
        self.mlp = nn.Sequential(nn.Linear(config.n_embd, config.d_ff), nn.GELU(), nn.Linear(config.d_ff, config.n_embd),
                                 nn.Dropout(config.dropout))

    def forward(self, x: torch.Tensor, cache: Optional[dict] = None) -> torch.Tensor:
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
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, observations, prev_actions, prev_rewards, prev_dones, prev_arrivals=None, *, positions=None,
                caches=None):
        """observations (B, T, obs_dim); prev_actions (B, T) int64 in 0..4; prev_rewards, prev_dones (B, T);
        prev_arrivals (B, T, 2), the scaled (x, y) the previous action led to, read only by a model with
        `config.arrival`. positions (T,) int64 (default 0..T-1); caches: one dict per block for
        incremental decoding. Returns logits (B, T, 5)."""
        B, T, _ = observations.shape
        if positions is None:
            positions = torch.arange(T, device=observations.device)
        parts = [observations, F.one_hot(prev_actions, K.NUM_ACTIONS).to(observations.dtype),
                 prev_rewards[..., None], prev_dones[..., None]]
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
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=device.type == "cuda")


def lr_at(update: int, args: Args) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if update < args.warmup_updates:
        return args.lr * (update + 1) / args.warmup_updates
    progress = min(1.0, (update - args.warmup_updates) / max(1, args.updates - args.warmup_updates))
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


# ----------------------------------------------------------------------------------------------
# In-context evaluation (full recompute over the trimmed history; ad_eval.py has the fast path)
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_in_context(model: DecisionModel, tasks: np.ndarray, steps: int, size: int, seed: int,
                        device: torch.device) -> list[np.ndarray]:
    """Run the model on `tasks` (N, 4) for `steps` env steps, feeding it its own history trimmed at
    its context. Returns the episode returns of each env."""
    model.eval()
    config, N = model.config, len(tasks)
    env = K.KeyDoorVectorEnv(N, size=size, light=config.obs_dim == K.LIGHT_OBS_DIM, tasks=tasks, split="all")
    observations, _ = env.reset(seed=seed)
    generator = torch.Generator().manual_seed(seed)
    history = {"observations": torch.zeros(N, steps, config.obs_dim),
               "prev_actions": torch.full((N, steps), FIRST_PREV_ACTION),
               "prev_rewards": torch.zeros(N, steps), "prev_dones": torch.zeros(N, steps),
               "prev_arrivals": torch.zeros(N, steps, 2)}  # the first: FIRST_PREV_ARRIVAL, cell (0, 0), scaled
    history["prev_dones"][:, 0] = FIRST_PREV_DONE
    returns, episode_return = [[] for _ in range(N)], np.zeros(N)
    for t in range(steps):
        history["observations"][:, t] = torch.as_tensor(observations)
        lo = max(0, t + 1 - config.context)
        window = {k: v[:, lo:t + 1].to(device) for k, v in history.items()}
        logits = model(**window)[:, -1].float().cpu()
        actions = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]
        observations, rewards, terminated, truncated, infos = env.step(actions.numpy())
        if t + 1 < steps:
            history["prev_actions"][:, t + 1] = actions
            history["prev_rewards"][:, t + 1] = torch.as_tensor(rewards)
            history["prev_dones"][:, t + 1] = torch.as_tensor(terminated | truncated, dtype=torch.float32)
            history["prev_arrivals"][:, t + 1] = torch.as_tensor(env_arrivals(observations, terminated | truncated, infos))
        episode_return += rewards
        for i in np.flatnonzero(terminated | truncated):
            returns[i].append(episode_return[i])
            episode_return[i] = 0.0
    model.train()
    return [np.array(r) for r in returns]


def env_arrivals(observations: np.ndarray, done: np.ndarray, infos: dict) -> np.ndarray:
    """(N, 2) scaled cells the last actions led to: the new position, or at an episode's end the
    position of gymnasium's final observation (the new one is the next episode's start)."""
    cells = observations[:, :2].copy()
    if done.any():
        cells[done] = infos["final_obs"][done, :2]
    return cells


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------
def checkpoint_path(args: Args) -> str:
    obs = "light" if args.light_obs else "dark"
    return os.path.join(args.data_dir, "checkpoints", f"{args.exp_name}__{args.dataset}__{obs}__ctx{args.context}__{args.seed}.pt")


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Read a checkpoint written by this script; raise ValueError if it is not one."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    missing = {"model", "optimizer", "update", "args", "model_config", "data"} - set(checkpoint if isinstance(checkpoint, dict) else {})
    if not missing:
        missing = {"dataset", "size", "obs_dim"} - set(checkpoint["data"] if isinstance(checkpoint["data"], dict) else {})
    if missing:
        raise ValueError(f"{path}: not an ad_train.py checkpoint (missing {sorted(missing)})")
    return checkpoint


def model_from_checkpoint(checkpoint: dict) -> DecisionModel:
    model = DecisionModel(ModelConfig(**checkpoint["model_config"]))  # no "arrival" (older checkpoints): False
    model.load_state_dict(checkpoint["model"])
    return model


# ----------------------------------------------------------------------------------------------
def validate(args: Args) -> None:
    checks = [
        (args.context >= 1, f"--context must be >= 1, got {args.context}"),
        (args.updates >= 1 and args.batch_size >= 1, "--updates and --batch-size must be >= 1"),
        (args.episode_stride >= 1, f"--episode-stride must be >= 1, got {args.episode_stride}"),
        (args.history_steps >= -1, f"--history-steps must be >= -1, got {args.history_steps}"),
        (min(args.n_layer, args.n_head, args.n_embd, args.d_ff) >= 1, "--n-layer, --n-head, --n-embd and --d-ff must be >= 1"),
        (args.n_head >= 1 and args.n_embd % args.n_head == 0, f"--n-embd {args.n_embd} must be divisible by --n-head {args.n_head}"),
        (min(args.log_every, args.save_every) >= 1, "--log-every and --save-every must be >= 1"),
        (args.eval_every >= 0 and (args.eval_every == 0 or min(args.eval_envs, args.eval_steps) >= 1),
         "--eval-every must be >= 0, and --eval-envs and --eval-steps >= 1 when it is on"),
        (0 <= args.dropout < 1 and args.lr > 0, "--dropout must lie in [0, 1) and --lr be > 0"),
        (0 <= args.val_fraction < 1, f"--val-fraction must lie in [0, 1), got {args.val_fraction}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def main(args: Args) -> dict:
    validate(args)
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if distributed:  # torchrun: one process per GPU, the same code path with a DDP wrapper
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        device = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}" if torch.cuda.is_available() else "cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    else:
        rank, world = 0, 1
        device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    master = rank == 0
    random.seed(args.seed + rank)
    np.random.seed(args.seed + rank)
    torch.manual_seed(args.seed + rank)

    folder = os.path.join(args.data_dir, args.dataset)
    runs, meta = load_dataset(folder, args.light_obs, args.history_steps, args.episode_stride, args.context,
                              args.arrival_token)
    # hold out whole runs for validation; a single-run dataset (1xN) holds out its last steps instead
    order = np.random.default_rng(args.seed).permutation(len(runs))
    num_val = min(len(runs) - 1, int(math.ceil(args.val_fraction * len(runs)))) if args.val_fraction > 0 else 0
    if num_val:
        val_runs, train_runs = [runs[i] for i in order[:num_val]], [runs[i] for i in order[num_val:]]
    elif args.val_fraction > 0:
        cut = int(len(runs[0]["actions"]) * (1 - args.val_fraction))
        train_runs = [{k: v[:cut] for k, v in runs[0].items() if k != "returns"}]
        val_runs = [{k: v[cut:] for k, v in runs[0].items() if k != "returns"}]
    else:
        train_runs, val_runs = runs, []
    train_data = WindowSampler(train_runs, args.context, meta["obs_scale"], device)
    val_data = WindowSampler(val_runs, args.context, meta["obs_scale"], device) if val_runs and \
        max(len(r["actions"]) for r in val_runs) >= args.context else None

    config = ModelConfig(obs_dim=meta["obs_dim"], context=args.context, n_layer=args.n_layer, n_head=args.n_head,
                         n_embd=args.n_embd, d_ff=args.d_ff, dropout=args.dropout, arrival=args.arrival_token)
    model = DecisionModel(config).to(device)
    optimizer = model.optimizer(args.lr, args.weight_decay, device)
    # what the windows are drawn from: a resume must not silently change it
    data_info = {"dataset": args.dataset, "size": meta["size"], "light_obs": args.light_obs, "obs_dim": meta["obs_dim"],
                 "history_steps": args.history_steps, "episode_stride": args.episode_stride,
                 "val_fraction": args.val_fraction}
    path = checkpoint_path(args)
    start_update = 0
    run_name = f"KeyDoor-{'Light' if args.light_obs else 'Dark'}-{meta['size']}x{meta['size']}__{args.exp_name}__{args.seed}__{int(time.time())}"
    if os.path.exists(path):
        checkpoint = load_checkpoint(path, map_location=device)
        # checkpoints from before --arrival-token have no "arrival" in their config: they had none
        if {"arrival": False, **checkpoint["model_config"]} != asdict(config) or checkpoint["data"] != data_info:
            raise ValueError(f"{path} holds a model of another shape or data ({checkpoint['model_config']}, "
                             f"{checkpoint['data']}); move it away or change --exp-name")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start_update, run_name = checkpoint["update"], checkpoint["run_name"]
        if master:
            print(f"resuming {path} at update {start_update}")
    raw_model = model
    if args.compile and device.type == "cuda":
        model = torch.compile(model)
    if distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    writer = SummaryWriter(os.path.join("runs", run_name)) if master else None
    if writer:
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items()))
        print(f"{folder}: {len(runs)} runs, {train_data.tokens:,} training tokens; model "
              f"{sum(p.numel() for p in raw_model.parameters()):,} parameters on {device}")

    def save(update: int) -> None:
        checkpoint = {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "update": update,
                      "args": asdict(args), "model_config": asdict(config), "data": data_info, "run_name": run_name}
        K.atomic_write(path, lambda f: torch.save(checkpoint, f))

    generator = torch.Generator().manual_seed(args.seed * 7919 + rank + start_update)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    local_batch = max(1, args.batch_size // world)
    test_tasks = K.eval_tasks(meta["size"], args.eval_envs, args.seed, allow_train_tasks=True) if args.eval_every else None
    last_time, last_update, stats = time.time(), start_update, {}
    bar = tqdm(range(start_update, args.updates), initial=start_update, total=args.updates, disable=not (master and args.progress))
    for update in bar:
        lr = lr_at(update, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        inputs, targets = train_data.sample(local_batch, generator)
        with autocast:
            logits = model(**inputs)
        loss = F.cross_entropy(logits.float().reshape(-1, K.NUM_ACTIONS), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        done = update + 1
        if writer and (done % args.log_every == 0 or done == args.updates):
            accuracy = (logits.argmax(-1) == targets).float().mean().item()
            elapsed = time.time() - last_time
            writer.add_scalar("losses/train_loss", loss.item(), done)
            writer.add_scalar("charts/action_accuracy", accuracy, done)
            writer.add_scalar("charts/learning_rate", lr, done)
            writer.add_scalar("charts/tokens_per_second", (done - last_update) * args.batch_size * args.context / elapsed, done)
            if val_data is not None:
                val_loss, val_accuracy = validation_loss(raw_model, val_data, args.batch_size, args.seed, autocast)
                writer.add_scalar("losses/val_loss", val_loss, done)
                writer.add_scalar("charts/val_action_accuracy", val_accuracy, done)
                stats["val_loss"] = val_loss
            stats.update(train_loss=loss.item(), accuracy=accuracy)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{accuracy:.2f}")
            last_time, last_update = time.time(), done
        if writer and args.eval_every and (done % args.eval_every == 0 or done == args.updates):
            returns = evaluate_in_context(raw_model, test_tasks, args.eval_steps, meta["size"], args.seed, device)
            final = np.mean([r[-max(1, len(r) // 4):].mean() if len(r) else 0.0 for r in returns])
            writer.add_scalar("eval/return", final, done)
            stats["eval_return"] = float(final)
        if master and (done % args.save_every == 0 or done == args.updates):
            save(done)
    if writer:
        writer.close()
    if distributed:
        dist.destroy_process_group()
    return {"checkpoint": path, **stats}


@torch.no_grad()
def validation_loss(model: DecisionModel, data: WindowSampler, batch_size: int, seed: int, autocast) -> tuple[float, float]:
    """Loss and accuracy on a fixed set of validation windows (the same every time)."""
    model.eval()
    inputs, targets = data.sample(batch_size, torch.Generator().manual_seed(seed))
    with autocast:
        logits = model(**inputs)
    loss = F.cross_entropy(logits.float().reshape(-1, K.NUM_ACTIONS), targets.reshape(-1)).item()
    accuracy = (logits.argmax(-1) == targets).float().mean().item()
    model.train()
    return loss, accuracy


if __name__ == "__main__":
    K.run_cli(main, Args)
