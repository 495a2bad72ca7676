"""RL²: a causal Transformer meta-learner trained by PPO over whole trials of Dark-Key-To-Door.

    python rl2_train.py                          # 9x9, 64 trials in parallel, writes data/rl2/
    python rl2_train.py --iterations 50 --size 5 # a quick look on a small grid
    python rl2_train.py --eval-split test --eval-envs 100   # a finished run: evaluate it on 100 test tasks

A trial is `--episodes-per-trial` (10) consecutive episodes on one task, drawn anew from the train
split for every trial. The policy sees the trial so far as tokens (o_t, a_{t-1}, r_{t-1}, d_{t-1}),
the same tokens as AD, and maximises the return of the whole trial: to do well it must explore in
the first episodes and exploit what it found in the later ones. Why PPO over whole trials: a trial
(at most 500 steps) fits in the context, so the value and the policy are trained on exactly the
sequences the rollout produced (a KV cache steps all trials together), and the clipped objective is
stable with a Transformer trunk.

`--arrival-token` adds p_{t-1} to each token, the cell the previous action led to (gymnasium's final
observation at an episode's end). Why: the door ends the episode, so the door's cell is in no o_t;
without p the policy often found the door and then missed it in later episodes (docs/rl2.md, "The
arrival token"). Off by default: RL² is AD's baseline on its plain tokens (ad_train.py turns it on by
default, as its laptop recipe).

Files (stem = <exp_name>__<size>x<size>__<seed>): `data/rl2/<stem>__run_<env>_it<first iteration>.npz`,
its experience, the fifth dataset (`ad_train.py --dataset rl2`); `data/checkpoints/<stem>.pt`, from which
a rerun resumes bit for bit; `data/eval/<stem>__curve.csv`, the learning curve (a row per evaluation);
`data/eval/<stem>__<split><N>_trial_seed<seed>.npz`, the final held-out trials and a random policy's, in
ad_eval.py's layout. Settings are chosen on the 20 validation tasks, results reported on test tasks. A
run that has reached `--iterations` only evaluates its checkpoint on the split asked for. A rerun resumes
only under the flags its checkpoint was trained with (`TRAINING_FLAGS`; `--iterations` may grow): another
`--lr`, say, is refused in one line naming the flag and both values.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

import keydoor_env as K


@dataclass
class Args:
    size: int = 9
    """grid size"""
    episodes_per_trial: int = 10
    """episodes with the same task in one trial"""
    num_envs: int = 64
    """trials run in parallel per iteration"""
    iterations: int = 1300
    """PPO iterations (each: one trial per env, then the update)"""
    lr: float = 3e-4
    """Adam learning rate"""
    gamma: float = 0.995
    """discount within a trial (across its episodes: a trial is one RL² episode)"""
    gae_lambda: float = 0.95
    """GAE lambda"""
    update_epochs: int = 4
    """PPO epochs per iteration"""
    num_minibatches: int = 4
    """minibatches of whole trials per epoch"""
    clip_coef: float = 0.2
    """PPO clip range"""
    ent_coef: float = 0.01
    """entropy bonus"""
    vf_coef: float = 0.5
    """value loss weight"""
    max_grad_norm: float = 0.5
    """gradient norm clipping"""
    n_layer: int = 3
    """Transformer blocks"""
    n_head: int = 4
    """attention heads"""
    n_embd: int = 64
    """embedding width"""
    d_ff: int = 256
    """feed-forward width"""
    arrival_token: bool = False
    """add to each token the cell the previous action led to (the door's cell at an episode's end)"""
    eval_every: int = 25
    """iterations between evaluations on held-out tasks (0: only at the end)"""
    eval_split: str = "validation"
    """held-out tasks to evaluate on: validation (20 fixed tasks, for choosing settings) or test (for reporting)"""
    eval_envs: int = 20
    """held-out tasks per evaluation (at most what the split holds)"""
    eval_seed: int = 0
    """seed of the choice of held-out tasks (0: --seed); ad_eval.py's --seed S picks the same tasks as --eval-seed S"""
    save_every: int = 10
    """iterations between checkpoints (and dataset chunks)"""
    data_dir: str = "data"
    """the shared folder: data/rl2/, data/checkpoints/ and data/eval/"""
    seed: int = 1
    """seed of python, numpy, torch, the task draws and the choice of test tasks"""
    exp_name: str = "rl2"
    """experiment name, in the run and checkpoint names"""
    cuda: bool = True
    """use CUDA when available"""
    progress: bool = True
    """show a progress bar"""


# --- The model: the same pre-norm causal Transformer as ad_train.py (without dropout), with a policy and a value head
@dataclass
class ModelConfig:  # built from `Args` in `main`: the context is one whole trial
    obs_dim: int
    context: int
    n_layer: int
    n_head: int
    n_embd: int
    d_ff: int
    arrival: bool  # tokens carry p_{t-1}, the (x, y) the previous action led to (--arrival-token)
    dropout = 0.0  # not a field, not a flag: RL² trains without dropout (the shared block's dropout layers pass x on)
    attn_dropout = None  # the shared attention's: None is `dropout` (0) on the attention weights too


# SelfAttention and Block are ad_train.py's, character for character (a test compares them): each script stays one
# file to copy beside keydoor_env.py.
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


class ActorCritic(nn.Module):
    """Causal Transformer over trial tokens (o_t, a_{t-1}, r_{t-1}, d_{t-1}[, p_{t-1}]): action logits and value."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        # one linear embedding of [o_t, one-hot a_{t-1}, r_{t-1}, d_{t-1}(, p_{t-1})]
        self.embed = nn.Linear(config.obs_dim + K.NUM_ACTIONS + 2 + 2 * config.arrival, config.n_embd)
        self.pos = nn.Embedding(config.context, config.n_embd)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.policy = nn.Linear(config.n_embd, K.NUM_ACTIONS)
        self.value = nn.Linear(config.n_embd, 1)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        # a near-uniform first policy: PPO starts from maximal exploration, as CleanRL's small actor init does
        nn.init.normal_(self.policy.weight, std=0.002)

    def forward(
        self,
        observations: torch.Tensor,
        prev_actions: torch.Tensor,
        prev_rewards: torch.Tensor,
        prev_dones: torch.Tensor,
        prev_arrivals: torch.Tensor | None = None,
        start: int = 0,
        caches: list[dict] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (B, T, ...) for positions start..start+T-1; `prev_arrivals` (B, T, 2), the scaled (x, y) the
        previous action led to, is read only by a model with `config.arrival`.
        Returns logits (B, T, 5) and values (B, T)."""
        T = observations.shape[1]
        parts = [
            observations,
            F.one_hot(prev_actions, K.NUM_ACTIONS).to(observations.dtype),
            prev_rewards[..., None],
            prev_dones[..., None],
        ]
        if self.config.arrival:
            parts.append(prev_arrivals)
        features = torch.cat(parts, dim=-1)  # (B, T, obs_dim + 7 [+ 2])
        positions = torch.arange(start, start + T, device=observations.device)
        x = self.embed(features) + self.pos(positions)  # (B, T, E)
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        x = self.ln_f(x)
        return self.policy(x), self.value(x)[..., 0]


# --- Rollout of one trial per env, and its episodes
TOKEN_KEYS = ("observations", "prev_actions", "prev_rewards", "prev_dones", "prev_arrivals")  # the model's inputs


def trial_buffer(num_envs: int, length: int, obs_dim: int) -> dict:
    """Zeroed (num_envs, length, ...) tensors for one trial per env: its tokens, what the policy did, and `active`."""
    return {
        "observations": torch.zeros(num_envs, length, obs_dim),
        "prev_actions": torch.zeros(num_envs, length, dtype=torch.long),
        "prev_rewards": torch.zeros(num_envs, length),
        "prev_dones": torch.zeros(num_envs, length),
        "prev_arrivals": torch.zeros(num_envs, length, 2),
        "actions": torch.zeros(num_envs, length, dtype=torch.long),
        "logprobs": torch.zeros(num_envs, length),
        "values": torch.zeros(num_envs, length),
        "rewards": torch.zeros(num_envs, length),
        "terminations": torch.zeros(num_envs, length, dtype=torch.bool),
        "truncations": torch.zeros(num_envs, length, dtype=torch.bool),
        "active": torch.zeros(num_envs, length, dtype=torch.bool),
    }


@torch.no_grad()
def run_trials(
    model: ActorCritic,
    env: K.KeyDoorVectorEnv,
    tasks: np.ndarray,
    episodes: int,
    generator: torch.Generator,
    device: torch.device,
) -> dict:
    """One trial of `episodes` episodes per env on `tasks` (N, 4), all envs together, KV cache.

    Returns (N, L) tensors, L = episodes * 50: tokens, actions, log-probs, values, rewards and `active` (the
    env was still in its trial). Envs that finish early keep stepping (the batch stays rectangular) but
    their steps are inactive and masked everywhere.
    """
    N = len(tasks)
    L = episodes * K.EPISODE_STEPS  # a trial's longest length: every episode truncated
    observations, _ = env.reset(options={"tasks": tasks})
    buf = trial_buffer(N, L, observations.shape[1])
    finished = np.zeros(N, dtype=np.int64)  # episodes finished in this trial
    caches = [{} for _ in model.blocks]
    # the first token of a trial looks like the start of any episode, as in AD: action "stay", reward 0, done 1
    token = {  # (N, ...) each: the next input of the model, by its argument names
        "observations": torch.as_tensor(observations),
        "prev_actions": torch.zeros(N, dtype=torch.long),
        "prev_rewards": torch.zeros(N),
        "prev_dones": torch.ones(N),
        "prev_arrivals": torch.as_tensor(observations[:, :2]),  # before the first action: where the agent stands
    }
    for t in range(L):
        active = finished < episodes  # (N,) bool
        if not active.any():
            break
        for key in TOKEN_KEYS:
            buf[key][:, t] = token[key]
        logits, values = model(
            **{key: value[:, None].to(device) for key, value in token.items()}, start=t, caches=caches
        )
        dist = torch.distributions.Categorical(logits=logits[:, 0].float().cpu())
        action = torch.multinomial(dist.probs, 1, generator=generator)[:, 0]  # (N,)
        observations, rewards, terminated, truncated, infos = env.step(action.numpy())
        ended = terminated | truncated  # (N,) bool: the episode ended with this action
        arrival = K.final_observations(observations, infos)[:, :2]  # (N, 2); at an episode's end, the cell it ended in
        buf["actions"][:, t] = action
        buf["logprobs"][:, t] = dist.log_prob(action)
        buf["values"][:, t] = values[:, 0].float().cpu()
        buf["rewards"][:, t] = torch.as_tensor(rewards)
        buf["terminations"][:, t] = torch.as_tensor(terminated)
        buf["truncations"][:, t] = torch.as_tensor(truncated)
        buf["active"][:, t] = torch.as_tensor(active)
        finished += ended & active
        token = {
            "observations": torch.as_tensor(observations),
            "prev_actions": action,
            "prev_rewards": torch.as_tensor(rewards),
            "prev_dones": torch.as_tensor(ended, dtype=torch.float32),
            "prev_arrivals": torch.as_tensor(arrival),
        }
    buf["rewards"] *= buf["active"]  # an env past the end of its trial earns nothing
    return buf


def trial_metrics(buf: dict, episodes_per_trial: int) -> dict:
    """The trials' "episodes" (active steps only; flat "env", "return", "end_step" arrays), the mean over
    envs of each episode index's return "by_episode" (E,), "first_500" (per env the mean return of the
    episodes ended within 500 steps, `K.window_returns`, then the mean over envs) and "episodes_5_to_10"."""
    num_envs = len(buf["rewards"])
    dones = (buf["terminations"] | buf["truncations"]).numpy()
    episodes = K.stream_episodes(buf["rewards"].numpy(), dones, buf["active"].sum(1).numpy())
    # an episode lasts at most 50 steps, so every trial holds exactly its E episodes, env by env in order
    by_episode = episodes["return"].reshape(num_envs, episodes_per_trial).mean(0, dtype=np.float64)
    if episodes_per_trial > 4:
        episodes_5_to_10 = float(by_episode[4:].mean())
    else:
        episodes_5_to_10 = float("nan")  # a trial too short to have a fifth episode
    return {
        "episodes": episodes,
        "by_episode": by_episode,
        "first_500": float(np.nanmean(K.window_returns(episodes, num_envs, 0, 500))),
        "episodes_5_to_10": episodes_5_to_10,
    }


def trials_to_histories(buf: dict, tasks: np.ndarray) -> list[dict]:
    """Each env's trial as contract arrays (active steps only)."""
    keys = ("observations", "actions", "rewards", "terminations", "truncations")
    histories = []
    for i, steps in enumerate(buf["active"].sum(1).tolist()):
        history = {key: buf[key][i, :steps].numpy() for key in keys}
        history["tasks"] = np.repeat(tasks[i][None], steps, axis=0)  # (steps, 4): one task for the whole trial
        histories.append(history)
    return histories


# --- PPO over whole trials
def gae(buf: dict, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns (N, L) over each trial; the trial ends at its last active step (value 0 after)."""
    rewards = buf["rewards"]
    values = buf["values"]
    active = buf["active"].float()
    N, L = rewards.shape
    advantages = torch.zeros(N, L)
    last = torch.zeros(N)  # the advantage of step t + 1
    for t in reversed(range(L)):
        if t + 1 < L:
            next_active = active[:, t + 1]
            next_value = values[:, t + 1] * next_active
        else:  # past the buffer's end: every trial has ended
            next_active = torch.zeros(N)
            next_value = torch.zeros(N)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * next_active * last) * active[:, t]
        advantages[:, t] = last
    return advantages, advantages + values


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of `x` over the steps where the float `mask` (same shape) is 1: the trials' active steps."""
    return (x * mask).sum() / mask.sum()


def normalize(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Advantages at mean 0 and standard deviation 1 over the active steps of a minibatch (as CleanRL's PPO)."""
    mean = masked_mean(advantages, mask)
    std = masked_mean((advantages - mean) ** 2, mask).sqrt()
    return (advantages - mean) / (std + 1e-8)


def ppo_update(
    model: ActorCritic,
    optimizer: torch.optim.Optimizer,
    buf: dict,
    args: Args,
    generator: torch.Generator,
    device: torch.device,
) -> dict:
    """`args.update_epochs` passes of PPO over the trials of `buf` in `args.num_minibatches` minibatches of whole
    trials (a trial is one sequence of the model: it cannot be cut). Returns the last minibatch's losses."""
    advantages, returns = gae(buf, args.gamma, args.gae_lambda)  # (N, L) each
    active = buf["active"]
    length = int(active.any(0).nonzero().max()) + 1  # steps up to the last active one: the rest is padding
    tokens = {key: buf[key][:, :length] for key in TOKEN_KEYS}
    N = active.shape[0]
    per_minibatch = max(1, N // args.num_minibatches)
    stats = {}
    for _ in range(args.update_epochs):
        order = torch.randperm(N, generator=generator)
        for first in range(0, N, per_minibatch):
            idx = order[first : first + per_minibatch]
            mask = active[idx, :length].to(device).float()  # (n, length)
            logits, values = model(**{key: value[idx].to(device) for key, value in tokens.items()})
            logp_all = torch.log_softmax(logits.float(), -1)  # (n, length, 5)
            logp = logp_all.gather(-1, buf["actions"][idx, :length, None].to(device))[..., 0]  # (n, length)
            old_logp = buf["logprobs"][idx, :length].to(device)
            ratio = (logp - old_logp).exp()
            adv = normalize(advantages[idx, :length].to(device), mask)
            # the clipped surrogate: the pessimistic one of the two, so a step gains nothing by moving the
            # policy's probability of an action beyond 1 ± clip_coef of the probability that acted
            clipped_ratio = ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)
            pg_loss = torch.maximum(-adv * ratio, -adv * clipped_ratio)
            v_loss = 0.5 * (values.float() - returns[idx, :length].to(device)) ** 2
            entropy = -(logp_all.exp() * logp_all).sum(-1)
            loss = (
                masked_mean(pg_loss, mask)
                + args.vf_coef * masked_mean(v_loss, mask)
                - args.ent_coef * masked_mean(entropy, mask)  # the entropy bonus keeps the policy exploring
            )

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()

            with torch.no_grad():
                approx_kl = masked_mean((ratio - 1) - (logp - old_logp), mask)  # CleanRL's k3 estimator
                stats = {
                    "policy_loss": masked_mean(pg_loss, mask).item(),
                    "value_loss": masked_mean(v_loss, mask).item(),
                    "entropy": masked_mean(entropy, mask).item(),
                    "approx_kl": approx_kl.item(),
                }
    return stats


# --- Held-out evaluation (beside `K.random_episodes`, the random policy's)
def evaluate(model: ActorCritic, args: Args, tasks: np.ndarray, device: torch.device) -> dict:
    """One trial on each held-out task of `tasks` (N, 4), actions sampled with a fixed seed."""
    env = K.KeyDoorVectorEnv(len(tasks), size=args.size, tasks=tasks, split="all")
    env.reset(seed=args.seed)
    generator = torch.Generator().manual_seed(args.seed)  # every evaluation draws the same numbers
    model.eval()
    buf = run_trials(model, env, tasks, args.episodes_per_trial, generator, device)
    model.train()
    return {**trial_metrics(buf, args.episodes_per_trial), "tasks": tasks}


# --- The run
def main(args: Args) -> dict:
    # 1. every flag, input and output checked before any work
    validate(args)
    eval_seed = args.eval_seed or args.seed  # the seed the held-out tasks are chosen with (ad_eval.py's --seed)
    eval_tasks = K.eval_tasks(args.size, args.eval_split, args.eval_envs, eval_seed)  # (eval_envs, 4)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    model_config = ModelConfig(
        obs_dim=K.DARK_OBS_DIM,
        context=args.episodes_per_trial * K.EPISODE_STEPS,  # one whole trial
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        d_ff=args.d_ff,
        arrival=args.arrival_token,
    )
    data_folder = os.path.join(args.data_dir, "rl2")
    checkpoint_folder = os.path.join(args.data_dir, "checkpoints")
    eval_folder = os.path.join(args.data_dir, "eval")
    stem = f"{args.exp_name}__{args.size}x{args.size}__{args.seed}"  # names the checkpoint, dataset chunks, eval files
    checkpoint_path = os.path.join(checkpoint_folder, f"{stem}.pt")
    curve_path = os.path.join(eval_folder, f"{stem}__curve.csv")
    eval_path = os.path.join(eval_folder, f"{stem}__{args.eval_split}{args.eval_envs}_trial_seed{eval_seed}.npz")
    header = curve_header(args.episodes_per_trial)

    # 2. the model, resumed from the checkpoint if there is one
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    with out_of_memory_in_one_line(args, device):
        model = ActorCritic(model_config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, eps=1e-5)
    start = 0  # iterations done
    seconds = 0.0  # the run's training wall-clock so far
    run_name = f"KeyDoor-Dark-{args.size}x{args.size}__{args.exp_name}__{args.seed}__{int(time.time())}"
    # every output, its longest name included, before any work (a model no memory holds has created nothing)
    for path in (checkpoint_path, curve_path, eval_path, chunk_path(data_folder, stem, args.num_envs - 1, 0), "runs/"):
        K.check_writable(path)
    with K.lock(checkpoint_path):  # resumed, trained and evaluated by this run alone
        if os.path.exists(checkpoint_path):
            checkpoint = load_checkpoint(checkpoint_path, args, model, optimizer)
            if checkpoint["iteration"] < args.iterations:
                check_curve_tasks(checkpoint_path, checkpoint, args)
            start = checkpoint["iteration"]
            seconds = checkpoint["seconds"]
            run_name = checkpoint["run_name"]  # one TensorBoard run across resumes
            print(f"resuming {checkpoint_path} at iteration {start}")
        # a finished run rerun only evaluates: no TensorBoard run, no writes but its own
        training = start < args.iterations
        curve = read_curve(curve_path, header, start) if training else []  # rows as CSV lines

        # 3. training: one trial per env on fresh train tasks, then a PPO update
        train_tasks = K.task_split(args.size, "train")
        env = K.KeyDoorVectorEnv(args.num_envs, size=args.size, tasks=train_tasks[: args.num_envs], split="train")
        env.reset(seed=args.seed)
        writer = open_writer(run_name, args) if training else None
        pending = [[] for _ in range(args.num_envs)]  # per env, its trials since the last dataset chunk
        result = {}  # the latest held-out evaluation
        clock = time.time() - seconds  # pauses between resumes left out
        bar = tqdm(range(start, args.iterations), initial=start, total=args.iterations, disable=not args.progress)
        for iteration in bar:
            # per-iteration generators: a resumed run draws what an uninterrupted one would have drawn
            rng = np.random.default_rng([args.seed, iteration])
            generator = torch.Generator().manual_seed(args.seed * 1_000_003 + iteration)
            tasks = train_tasks[rng.integers(len(train_tasks), size=args.num_envs)]  # (num_envs, 4)
            started = time.time()
            # the trials, their caches and the update grow with the flags
            with out_of_memory_in_one_line(args, device):
                buf = run_trials(model, env, tasks, args.episodes_per_trial, generator, device)
                stats = ppo_update(model, optimizer, buf, args, generator, device)
            # the update's own losses (after its first step the later minibatches already run the new weights) and
            # the weights: a diverged run stops here, never saved over the last good checkpoint
            diverged = not np.isfinite(list(stats.values())).all()
            if diverged or not all(torch.isfinite(p).all() for p in model.parameters()):
                raise ValueError(
                    f"training diverged: non-finite losses or weights at iteration {iteration + 1}; "
                    f"{checkpoint_path} keeps the last checkpoint saved before, if any (lower --lr or --max-grad-norm)"
                )
            sps = int(buf["active"].sum()) / (time.time() - started)

            completed = iteration + 1  # iterations completed, counting this one
            step = completed * args.num_envs * args.episodes_per_trial  # x axis: episodes of experience
            metrics = trial_metrics(buf, args.episodes_per_trial)
            log_iteration(writer, metrics, stats, sps, step)
            bar.set_postfix(ep1=f"{metrics['by_episode'][0]:.2f}", ep10=f"{metrics['by_episode'][-1]:.2f}")
            for i, history in enumerate(trials_to_histories(buf, tasks)):
                pending[i].append(history)

            if (args.eval_every and completed % args.eval_every == 0) or completed == args.iterations:
                result = evaluate(model, args, eval_tasks, device)
                log_evaluation(writer, result, step)
                # the only column a resumed run does not repeat bit for bit
                minutes = f"{(time.time() - clock) / 60:.1f}"
                values = [repr(float(value)) for value in eval_values(result)]
                curve.append(",".join([str(completed), str(step), *values, minutes]))
                write_curve(curve_path, header, curve)

            if completed % args.save_every == 0 or completed == args.iterations:
                # the dataset chunks first, then the checkpoint: a kill in between rewrites the same chunks
                save_dataset_chunks(pending, data_folder, stem, completed, args)
                pending = [[] for _ in range(args.num_envs)]
                checkpoint = {
                    "version": CHECKPOINT_VERSION,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "iteration": completed,
                    "args": asdict(args),  # its training flags are the checkpoint's own (`load_checkpoint`)
                    "model_config": asdict(model_config),
                    "run_name": run_name,
                    "seconds": time.time() - clock,
                }
                save_checkpoint(checkpoint_path, checkpoint)
        if writer is not None:
            writer.close()

        # 4. the held-out trials beside a random policy's, in the layout of ad_eval.py's files
        if not result:  # nothing left to train (a finished run rerun): evaluate the checkpoint as it is
            result = evaluate(model, args, eval_tasks, device)
        floor = K.random_episodes(
            eval_tasks, args.size, model_config.context, args.seed, episodes=args.episodes_per_trial
        )
        meta = {
            "algorithm": "rl2",
            "checkpoint": checkpoint_path,
            "model_config": asdict(model_config),
            "split": args.eval_split,
            "num_envs": args.eval_envs,
            "steps": model_config.context,
            "seed": args.seed,  # the training seed; it also seeds the evaluation's actions and the random policy
            "eval_seed": eval_seed,  # the seed the held-out tasks were chosen with (ad_eval.py's --seed)
            "size": args.size,
            "obs": "dark",
            "episodes_per_trial": args.episodes_per_trial,
            "iteration": max(start, args.iterations),
        }
        K.save_evaluation(eval_path, eval_tasks, result["episodes"], floor, meta)
        random_500 = float(np.nanmean(K.window_returns(floor, args.eval_envs, 0, 500)))
        by_episode = np.round(result["by_episode"], 2).tolist()
        print(
            f"{args.eval_split} tasks ({args.eval_envs}): return by episode {by_episode}, "
            f"first 500 steps {result['first_500']:.2f} (random {random_500:.2f}), "
            f"episodes 5-10 {result['episodes_5_to_10']:.2f} -> {eval_path}"
        )
        return {"checkpoint": checkpoint_path, "eval": eval_path, "curve": curve_path, **result}


# --- Flags
def validate(args: Args) -> None:
    """Every flag on its own, before any work (the eval split and envs are checked by `K.eval_tasks`).
    Comparisons with NaN are false, so `x > 0` refuses nan too; `math.isfinite` refuses inf."""
    try:  # first: the task split below enumerates all size**4 tasks
        K.validate_size(args.size)
    except ValueError as e:
        raise ValueError(f"--size: {e}") from None
    K.check_flags(
        [
            (args.episodes_per_trial >= 1, f"--episodes-per-trial must be >= 1, got {args.episodes_per_trial}"),
            (args.num_envs >= 1, f"--num-envs must be >= 1, got {args.num_envs}"),
            (args.iterations >= 1, f"--iterations must be >= 1, got {args.iterations}"),
            (math.isfinite(args.lr) and args.lr > 0, f"--lr must be a finite number > 0, got {args.lr}"),
            (0 <= args.gamma <= 1, f"--gamma must lie in [0, 1], got {args.gamma}"),
            (0 <= args.gae_lambda <= 1, f"--gae-lambda must lie in [0, 1], got {args.gae_lambda}"),
            (args.update_epochs >= 1, f"--update-epochs must be >= 1, got {args.update_epochs}"),
            (
                1 <= args.num_minibatches <= args.num_envs,
                f"--num-minibatches must lie in 1..{args.num_envs} (--num-envs), got {args.num_minibatches}",
            ),
            (
                math.isfinite(args.clip_coef) and args.clip_coef > 0,
                f"--clip-coef must be a finite number > 0, got {args.clip_coef}",
            ),
            (
                math.isfinite(args.ent_coef) and args.ent_coef >= 0,
                f"--ent-coef must be a finite number >= 0, got {args.ent_coef}",
            ),
            (
                math.isfinite(args.vf_coef) and args.vf_coef >= 0,
                f"--vf-coef must be a finite number >= 0, got {args.vf_coef}",
            ),
            (
                math.isfinite(args.max_grad_norm) and args.max_grad_norm > 0,
                f"--max-grad-norm must be a finite number > 0, got {args.max_grad_norm}",
            ),
            (args.n_layer >= 1, f"--n-layer must be >= 1, got {args.n_layer}"),
            (args.n_head >= 1, f"--n-head must be >= 1, got {args.n_head}"),
            (args.n_embd >= 1, f"--n-embd must be >= 1, got {args.n_embd}"),
            (args.d_ff >= 1, f"--d-ff must be >= 1, got {args.d_ff}"),
            (args.eval_every >= 0, f"--eval-every must be >= 0, got {args.eval_every}"),
            (args.eval_seed >= 0, f"--eval-seed must be >= 0, got {args.eval_seed}"),
            (args.save_every >= 1, f"--save-every must be >= 1, got {args.save_every}"),
            (args.seed >= 0, f"--seed must be >= 0, got {args.seed}"),  # numpy's generators take no negative seed
            (
                args.exp_name != "" and "/" not in args.exp_name and os.sep not in args.exp_name,
                f"--exp-name must be a non-empty name without '/', got {args.exp_name!r}",
            ),
        ]
    )
    # after --n-head >= 1: it divides here. Each head attends over n_embd / n_head of the width.
    K.check_flags(
        [(args.n_embd % args.n_head == 0, f"--n-embd {args.n_embd} must be a multiple of --n-head {args.n_head}")]
    )


# --- Checkpoints
# The flags that change what a further iteration computes. A rerun resumes only under the ones its checkpoint was
# trained with: otherwise its later iterations would silently differ from its earlier ones and its record would lie.
# --iterations may grow; the evaluation flags are checked against the learning curve (`check_curve_tasks`); the rest
# (--eval-every, --save-every, --cuda, --progress) change when and where things are written or run, not what.
TRAINING_FLAGS = (
    "size",
    "seed",
    "episodes_per_trial",
    "num_envs",
    "lr",
    "gamma",
    "gae_lambda",
    "update_epochs",
    "num_minibatches",
    "clip_coef",
    "ent_coef",
    "vf_coef",
    "max_grad_norm",
    "n_layer",
    "n_head",
    "n_embd",
    "d_ff",
    "arrival_token",
)
# the writer and its layout: another script's checkpoint, or another layout's, is refused, not misread
CHECKPOINT_VERSION = "rl2_train.py/1"


def flag(name: str) -> str:
    """The command-line flag of an `Args` field: eval_seed -> --eval-seed."""
    return "--" + name.replace("_", "-")


def load_checkpoint(path: str, args: Args, model: ActorCritic, optimizer: torch.optim.Optimizer) -> dict:
    """The checkpoint at `path` (on the CPU), its weights and Adam's state loaded into `model` and `optimizer`
    (strictly: every tensor, of its shape). A one-line error names the file, and the flag trained otherwise."""
    try:
        # opened without waiting for a writer: a FIFO named like a checkpoint reads empty (refused) rather than hang
        with open(path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK)) as file:
            checkpoint = torch.load(file, map_location="cpu", weights_only=True)
        if checkpoint["version"] != CHECKPOINT_VERSION:
            raise ValueError(f"format {checkpoint['version']}, this rl2_train.py reads {CHECKPOINT_VERSION}")
        changed = [name for name in TRAINING_FLAGS if checkpoint["args"][name] != getattr(args, name)]
        if not changed:  # the same flags build the same model: only a damaged file fails to load here
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
    except Exception as e:  # truncated, not a torch file, of another version, damaged
        reason = " ".join(str(e).split())  # one line, whatever PyTorch said
        raise ValueError(
            f"{path}: not a readable checkpoint of this version of rl2_train.py ({type(e).__name__}: {reason}); "
            "move it away"
        ) from None
    if changed:
        name = changed[0]
        raise ValueError(
            f"{path} was trained with {flag(name)} {checkpoint['args'][name]}, not {getattr(args, name)}; "
            "move it away or change --exp-name"
        )
    return checkpoint


def save_checkpoint(path: str, checkpoint: dict) -> None:
    """Written whole or not at all (`K.atomic_write`): a kill while saving leaves the previous checkpoint."""
    K.atomic_write(path, lambda f: torch.save(checkpoint, f))


def check_curve_tasks(path: str, checkpoint: dict, args: Args) -> None:
    """Training goes on with the evaluation it started with: one learning curve, one set of held-out tasks."""
    recorded = {name: checkpoint["args"][name] for name in ("eval_split", "eval_envs", "eval_seed")}
    resume_with = " ".join(f"{flag(name)} {value}" for name, value in recorded.items())
    for name, value in recorded.items():
        if value != getattr(args, name):
            raise ValueError(
                f"{path}: its learning curve is measured with {flag(name)} {value}, not {getattr(args, name)}; "
                f"resume its training with {resume_with}"
            )


# --- The learning curve
def curve_header(episodes_per_trial: int) -> str:
    """The learning curve's columns: the iteration, the episodes of experience, the held-out metrics, the minutes."""
    episode_columns = [f"episode_{i + 1}" for i in range(episodes_per_trial)]
    return ",".join(["iteration", "episodes", "first_500", "episodes_5_to_10"] + episode_columns + ["minutes"])


def eval_values(result: dict) -> list[float]:
    """The held-out metrics of an evaluation, in the learning curve's order."""
    return [result["first_500"], result["episodes_5_to_10"], *result["by_episode"]]


def read_curve(path: str, header: str, upto: int) -> list[str]:
    """The rows of an earlier run's curve up to iteration `upto` (a resumed run measures later ones again)."""
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            lines = f.read().splitlines()
        kept = [line for line in lines[1:] if int(line.split(",")[0]) <= upto]
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable learning curve ({type(e).__name__}); move it away") from None
    if lines[:1] != [header] or any(line.count(",") != header.count(",") for line in kept):
        raise ValueError(f"{path}: a learning curve of other settings; move it away or change --exp-name")
    return kept


def write_curve(path: str, header: str, rows: list[str]) -> None:
    """The whole file, every time: the figures script may read it at any moment."""
    text = "".join(line + "\n" for line in [header] + rows)
    K.atomic_write(path, lambda f: f.write(text.encode()))


# --- Dataset chunks, TensorBoard
def save_dataset_chunks(pending: list[list[dict]], folder: str, stem: str, completed: int, args: Args) -> None:
    """Each env's trials since the last chunk as one history file, named after the run and the chunk's first
    iteration: two runs (another --exp-name, seed or size) never overwrite each other, and no chunk is reused."""
    first = completed - len(pending[0]) + 1
    for i, trials in enumerate(pending):
        history = {key: np.concatenate([trial[key] for trial in trials]) for key in trials[0]}
        history_config = {
            "size": args.size,
            "style": "rl2",
            "light": False,
            "seed": args.seed,
            "run": i,
            "iterations": [first, completed],
            "algorithm": "rl2-ppo",
        }
        K.save_history(chunk_path(folder, stem, i, first), history, history_config)


def chunk_path(folder: str, stem: str, env: int, first: int) -> str:
    """The dataset chunk of env `env`'s trials from iteration `first` on."""
    return os.path.join(folder, f"{stem}__run_{env:05d}_it{first:06d}.npz")


def open_writer(run_name: str, args: Args) -> SummaryWriter:
    """The TensorBoard run, with the flags as a table (CleanRL's "hyperparameters" text)."""
    writer = SummaryWriter(os.path.join("runs", run_name))
    table = "\n".join(f"|{key}|{value}|" for key, value in asdict(args).items())
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table)
    return writer


def log_iteration(writer: SummaryWriter, metrics: dict, stats: dict, sps: float, step: int) -> None:
    """The iteration's own trials (train tasks) and PPO losses, at x = episodes of experience."""
    by_episode = metrics["by_episode"]
    writer.add_scalar("charts/trial_return", by_episode.sum(), step)
    writer.add_scalar("charts/return_first_500", metrics["first_500"], step)
    writer.add_scalar("charts/episode_1_return", by_episode[0], step)
    writer.add_scalar(f"charts/episode_{len(by_episode)}_return", by_episode[-1], step)
    writer.add_scalar("charts/SPS", sps, step)
    for name, value in stats.items():
        writer.add_scalar(f"losses/{name}", value, step)


def log_evaluation(writer: SummaryWriter, result: dict, step: int) -> None:
    """The held-out metrics, under the learning curve's names."""
    tags = ["eval/return_first_500", "eval/return_episodes_5_to_10"]
    tags += [f"eval/episode_{i + 1}_return" for i in range(len(result["by_episode"]))]
    for tag, value in zip(tags, eval_values(result), strict=True):
        writer.add_scalar(tag, value, step)


# --- Memory
@contextlib.contextmanager
def out_of_memory_in_one_line(args: Args, device: torch.device):
    """PyTorch's out-of-memory error, the GPU's or the CPU allocator's, as one line naming the flags to lower: the
    trials' buffers, the rollout's caches and the update's activations grow with --num-envs x --episodes-per-trial,
    the model with its widths."""
    try:
        yield
    except RuntimeError as e:  # torch.OutOfMemoryError is a RuntimeError too
        if not isinstance(e, torch.OutOfMemoryError) and "can't allocate memory" not in str(e):
            raise
        raise ValueError(
            f"--num-envs {args.num_envs:,} x --episodes-per-trial {args.episodes_per_trial:,} with --n-embd "
            f"{args.n_embd:,}: out of memory on {device}; lower --num-envs or --episodes-per-trial (or raise "
            "--num-minibatches), or --n-embd, --d-ff or --n-layer"
        ) from None


if __name__ == "__main__":
    K.run_cli(main, Args)
