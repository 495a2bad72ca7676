"""RL²: a causal Transformer meta-learner trained by PPO over whole trials of Dark-Key-To-Door.

    python rl2_train.py                          # 9x9, 64 trials in parallel, writes data/rl2/
    python rl2_train.py --iterations 50 --size 5 # a quick look on a small grid

A trial is `--episodes-per-trial` (10) consecutive episodes on one task, drawn anew from the train
split for every trial. The policy sees the trial so far as tokens (o_t, a_{t-1}, r_{t-1}, d_{t-1}),
the same tokens as AD, and maximises the return of the whole trial: to do well it must explore in
the first episodes and exploit what it found in the later ones.

`--arrival-token` adds p_{t-1} to each token, the cell the previous action led to. Why: the door
ends the episode, so the door's cell is in no o_t (the next o_t is the start of the next episode);
without p the policy must work it out from the last position and action, and often found the door
and then missed it in later episodes. p is the position in gymnasium's final observation at an
episode's end, and o_t's position at every other step. On 9x9 it reached 1.83 over episodes 5-10
in 400 iterations (34 min), against a plateau near 1.7 without it (README). It is off by default
because RL² is AD's baseline: with the flag it sees a cell that AD's default tokens lack
(`ad_train.py --arrival-token` adds the same cell to AD's).

Why PPO over whole trials: a trial is at most 500 steps, so the whole trial fits in the context,
the value and the policy are trained on exactly the sequences the rollout produced (no truncated
memory), and the clipped objective is stable with a Transformer trunk. Rollouts step all trials
together through the vector env with a KV cache (one token per step).

The meta-learner's own experience is the report's fifth dataset: every iteration appends each
env's trials to `data/rl2/`, one `.npz` history per env and chunk of iterations, in the contract
of keydoor_env.py, so that `ad_train.py --dataset rl2` can read it.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from typing import Optional

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
    eval_envs: int = 20
    """held-out tasks per evaluation"""
    save_every: int = 10
    """iterations between checkpoints (and dataset chunks)"""
    data_dir: str = "data"
    """the shared folder: data/rl2/ and data/checkpoints/"""
    seed: int = 1
    """seed of python, numpy, torch and the task draws"""
    exp_name: str = "rl2"
    """experiment name, in the run and checkpoint names"""
    cuda: bool = True
    """use CUDA when available"""
    progress: bool = True
    """show a progress bar"""


# ----------------------------------------------------------------------------------------------
# The model: the same pre-norm causal Transformer as ad_train.py, with a policy and a value head
# ----------------------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    obs_dim: int = 4
    context: int = 500
    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 64
    d_ff: int = 256
    arrival: bool = False  # tokens carry p_{t-1}, the (x, y) the previous action led to


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head, self.context = config.n_head, config.context
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor, cache: Optional[dict] = None) -> torch.Tensor:
        """x (B, T, E); with `cache`, the T new tokens attend to the cached ones and the cache grows."""
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
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif T == 1:  # one new token sees everything cached
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(B, T, E))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(config.n_embd), nn.LayerNorm(config.n_embd)
        self.attn = SelfAttention(config)
        self.mlp = nn.Sequential(nn.Linear(config.n_embd, config.d_ff), nn.GELU(), nn.Linear(config.d_ff, config.n_embd))

    def forward(self, x: torch.Tensor, cache: Optional[dict] = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


class ActorCritic(nn.Module):
    """Causal Transformer over trial tokens (o_t, a_{t-1}, r_{t-1}, d_{t-1}[, p_{t-1}]): action logits and value."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
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
        nn.init.normal_(self.policy.weight, std=0.002)  # a near-uniform first policy

    def forward(self, observations, prev_actions, prev_rewards, prev_dones, prev_arrivals=None, start: int = 0,
                caches=None):
        """Inputs (B, T, ...) for positions start..start+T-1; `prev_arrivals` (B, T, 2), the scaled (x, y) the
        previous action led to, is read only by a model with `config.arrival`. Returns logits (B, T, 5), values (B, T)."""
        T = observations.shape[1]
        parts = [observations, F.one_hot(prev_actions, K.NUM_ACTIONS).to(observations.dtype),
                 prev_rewards[..., None], prev_dones[..., None]] + ([prev_arrivals] if self.config.arrival else [])
        features = torch.cat(parts, dim=-1)  # (B, T, obs_dim + 7 [+ 2])
        x = self.embed(features) + self.pos(torch.arange(start, start + T, device=observations.device))
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        x = self.ln_f(x)
        return self.policy(x), self.value(x)[..., 0]


# ----------------------------------------------------------------------------------------------
# Rollout of one trial per env
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def run_trials(model: ActorCritic, env: K.KeyDoorVectorEnv, tasks: np.ndarray, episodes: int,
               generator: torch.Generator, device: torch.device, greedy: bool = False) -> dict:
    """One trial of `episodes` episodes per env on `tasks` (N, 4), all envs together, KV cache.

    Returns (N, L) tensors with L = episodes * 50: the tokens, actions, log-probs, values, rewards,
    `active` (the env was still in its trial at that step) and `episode_index`, plus the raw
    observations for the dataset. Envs that finish early keep stepping (so the batch stays
    rectangular) but their steps are inactive and masked everywhere.
    """
    N, L = len(tasks), episodes * K.EPISODE_STEPS
    observations, _ = env.reset(options={"tasks": tasks})
    obs_dim = observations.shape[1]
    buf = {"observations": torch.zeros(N, L, obs_dim), "prev_arrivals": torch.zeros(N, L, 2),
           "prev_actions": torch.zeros(N, L, dtype=torch.long),
           "prev_rewards": torch.zeros(N, L), "prev_dones": torch.zeros(N, L), "actions": torch.zeros(N, L, dtype=torch.long),
           "logprobs": torch.zeros(N, L), "values": torch.zeros(N, L), "rewards": torch.zeros(N, L),
           "terminations": torch.zeros(N, L, dtype=torch.bool), "truncations": torch.zeros(N, L, dtype=torch.bool),
           "active": torch.zeros(N, L, dtype=torch.bool), "episode_index": torch.zeros(N, L, dtype=torch.long)}
    buf["prev_dones"][:, 0] = 1.0  # the first token of a trial looks like the start of any episode
    finished = np.zeros(N, dtype=np.int64)  # episodes finished in this trial
    caches = [{} for _ in model.blocks]
    prev_action, prev_reward, prev_done = torch.zeros(N, dtype=torch.long), torch.zeros(N), torch.ones(N)
    prev_arrival = torch.as_tensor(observations[:, :2])  # before the first action: where the agent stands
    for t in range(L):
        active = finished < episodes
        if not active.any():
            break
        obs_t = torch.as_tensor(observations)
        buf["observations"][:, t], buf["prev_actions"][:, t] = obs_t, prev_action
        buf["prev_rewards"][:, t], buf["prev_dones"][:, t] = prev_reward, prev_done
        buf["prev_arrivals"][:, t] = prev_arrival
        logits, values = model(obs_t[:, None].to(device), prev_action[:, None].to(device), prev_reward[:, None].to(device),
                               prev_done[:, None].to(device), prev_arrival[:, None].to(device), start=t, caches=caches)
        dist = torch.distributions.Categorical(logits=logits[:, 0].float().cpu())
        action = dist.probs.argmax(-1) if greedy else torch.multinomial(dist.probs, 1, generator=generator)[:, 0]
        observations, rewards, terminated, truncated, infos = env.step(action.numpy())
        done = terminated | truncated
        arrival = observations[:, :2].copy()  # (N, 2); at an episode's end, the cell it ended in
        if done.any():
            arrival[done] = infos["final_obs"][done, :2]
        buf["actions"][:, t], buf["logprobs"][:, t] = action, dist.log_prob(action)
        buf["values"][:, t], buf["rewards"][:, t] = values[:, 0].float().cpu(), torch.as_tensor(rewards)
        buf["terminations"][:, t], buf["truncations"][:, t] = torch.as_tensor(terminated), torch.as_tensor(truncated)
        buf["active"][:, t], buf["episode_index"][:, t] = torch.as_tensor(active), torch.as_tensor(finished)
        finished += done & active
        prev_action, prev_reward = action, torch.as_tensor(rewards)
        prev_done, prev_arrival = torch.as_tensor(done, dtype=torch.float32), torch.as_tensor(arrival)
    buf["rewards"] *= buf["active"]
    return buf


def episode_returns_by_index(buf: dict, episodes: int) -> np.ndarray:
    """Mean over envs of the return of each episode index within the trial, (episodes,)."""
    returns = np.zeros((buf["rewards"].shape[0], episodes))
    for i in range(episodes):
        returns[:, i] = ((buf["episode_index"] == i) & buf["active"]).float().mul(buf["rewards"]).sum(1).numpy()
    return returns.mean(0)


def trial_episodes(buf: dict) -> dict:
    """Every episode of the trials as (env, return, end step) arrays: the layout of ad_eval.py's files."""
    episodes = {"env": [], "return": [], "end_step": []}
    for i, (rewards, dones) in enumerate(zip(buf["rewards"].numpy(), (buf["terminations"] | buf["truncations"]).numpy())):
        steps = int(buf["active"][i].sum())
        returns, ends = K.episode_returns(rewards[:steps], dones[:steps])
        episodes["env"] += [i] * len(returns)
        episodes["return"] += returns.tolist()
        episodes["end_step"] += (ends + 1).tolist()
    return {k: np.array(v) for k, v in episodes.items()}


def first_500_return(episodes: dict, num_envs: int) -> float:
    """Per env, the mean return of the episodes that ended within the first 500 steps; then across envs
    (the metric ad_eval.py prints for AD)."""
    early = episodes["end_step"] <= 500
    returns = [episodes["return"][early & (episodes["env"] == i)] for i in range(num_envs)]
    returns = [r.mean() for r in returns if len(r)]
    return float(np.mean(returns)) if returns else 0.0


def gae(buf: dict, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns over each trial; the trial ends at its last active step (value 0 after)."""
    rewards, values, active = buf["rewards"], buf["values"], buf["active"].float()
    N, L = rewards.shape
    advantages = torch.zeros(N, L)
    last = torch.zeros(N)
    for t in reversed(range(L)):
        next_value = values[:, t + 1] * active[:, t + 1] if t + 1 < L else torch.zeros(N)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_active = active[:, t + 1] if t + 1 < L else torch.zeros(N)
        last = (delta + gamma * lam * next_active * last) * active[:, t]
        advantages[:, t] = last
    return advantages, advantages + values


def ppo_update(model, optimizer, buf, args: Args, generator: torch.Generator, device: torch.device) -> dict:
    advantages, returns = gae(buf, args.gamma, args.gae_lambda)
    mask = buf["active"]
    length = int(mask.any(0).nonzero().max()) + 1  # steps up to the last active one
    tokens = {k: buf[k][:, :length] for k in ("observations", "prev_actions", "prev_rewards", "prev_dones", "prev_arrivals")}
    N = mask.shape[0]
    per_batch = max(1, N // args.num_minibatches)
    stats = {}
    for _ in range(args.update_epochs):
        order = torch.randperm(N, generator=generator)
        for lo in range(0, N, per_batch):
            idx = order[lo:lo + per_batch]
            m = mask[idx, :length].to(device).float()
            logits, values = model(**{k: v[idx].to(device) for k, v in tokens.items()})
            logp_all = torch.log_softmax(logits.float(), -1)
            logp = logp_all.gather(-1, buf["actions"][idx, :length, None].to(device))[..., 0]
            ratio = (logp - buf["logprobs"][idx, :length].to(device)).exp()
            masked = lambda x: (x * m).sum() / m.sum()  # mean over the active steps
            adv = advantages[idx, :length].to(device)
            adv = (adv - masked(adv)) / (masked((adv - masked(adv)) ** 2).sqrt() + 1e-8)
            pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef))
            v_loss = 0.5 * (values.float() - returns[idx, :length].to(device)) ** 2
            entropy = -(logp_all.exp() * logp_all).sum(-1)
            loss = masked(pg) + args.vf_coef * masked(v_loss) - args.ent_coef * masked(entropy)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            stats = {"policy_loss": masked(pg).item(), "value_loss": masked(v_loss).item(),
                     "entropy": masked(entropy).item(),
                     "approx_kl": masked((ratio - 1) - (logp - buf["logprobs"][idx, :length].to(device))).item()}
    return stats


def trials_to_histories(buf: dict, tasks: np.ndarray) -> list[dict]:
    """Each env's trial as contract arrays (active steps only)."""
    out = []
    for i in range(len(tasks)):
        active = buf["active"][i].numpy()
        steps = int(active.sum())
        out.append({"observations": buf["observations"][i, :steps].numpy(),
                    "actions": buf["actions"][i, :steps].numpy().astype(np.int64),
                    "rewards": buf["rewards"][i, :steps].numpy(),
                    "terminations": buf["terminations"][i, :steps].numpy(),
                    "truncations": buf["truncations"][i, :steps].numpy(),
                    "tasks": np.repeat(tasks[i][None], steps, axis=0)})
    return out


def evaluate(model, args: Args, device: torch.device, seed: int) -> dict:
    """One trial on each of `eval_envs` held-out tasks: return by episode index and over the first 500 steps."""
    tasks = K.eval_tasks(args.size, args.eval_envs, seed, allow_train_tasks=True)
    env = K.KeyDoorVectorEnv(len(tasks), size=args.size, tasks=tasks, split="all")
    env.reset(seed=seed)
    model.eval()
    buf = run_trials(model, env, tasks, args.episodes_per_trial, torch.Generator().manual_seed(seed), device)
    model.train()
    by_episode = episode_returns_by_index(buf, args.episodes_per_trial)
    episodes = trial_episodes(buf)  # written beside ad_eval.py's files, for one figure of both
    return {"by_episode": by_episode, "first_500": first_500_return(episodes, len(tasks)),
            "episodes_5_to_10": float(by_episode[4:].mean()) if len(by_episode) > 4 else float("nan"),
            "tasks": tasks, "episodes": episodes}


# ----------------------------------------------------------------------------------------------
def validate(args: Args) -> None:
    checks = [
        (args.iterations >= 1 and args.num_envs >= 1, "--iterations and --num-envs must be >= 1"),
        (args.episodes_per_trial >= 1, f"--episodes-per-trial must be >= 1, got {args.episodes_per_trial}"),
        (1 <= args.num_minibatches <= args.num_envs, "--num-minibatches must lie in 1..--num-envs"),
        (args.n_head >= 1 and args.n_embd % args.n_head == 0, "--n-embd must be divisible by --n-head"),
        (min(args.update_epochs, args.save_every, args.eval_envs, args.n_layer, args.d_ff) >= 1,
         "--update-epochs, --save-every, --eval-envs, --n-layer and --d-ff must be >= 1"),
        (args.eval_every >= 0, "--eval-every must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    K.validate_size(args.size)


def main(args: Args) -> dict:
    validate(args)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    config = ModelConfig(obs_dim=K.DARK_OBS_DIM, context=args.episodes_per_trial * K.EPISODE_STEPS, n_layer=args.n_layer,
                         n_head=args.n_head, n_embd=args.n_embd, d_ff=args.d_ff, arrival=args.arrival_token)
    model = ActorCritic(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, eps=1e-5)
    data_folder = os.path.join(args.data_dir, "rl2")
    stem = f"{args.exp_name}__{args.size}x{args.size}__{args.seed}"  # names the checkpoint, dataset chunks and eval file
    path = os.path.join(args.data_dir, "checkpoints", f"{stem}.pt")
    start, run_name = 0, f"KeyDoor-Dark-{args.size}x{args.size}__{args.exp_name}__{args.seed}__{int(time.time())}"
    if os.path.exists(path):
        try:
            checkpoint = torch.load(path, map_location=device, weights_only=True)
        except Exception as e:
            raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
        # checkpoints from before --arrival-token have no "arrival" in their config: they had none
        if not isinstance(checkpoint, dict) or {"arrival": False, **checkpoint.get("model_config", {})} != asdict(config):
            raise ValueError(f"{path} holds a model of another shape; move it away or change --exp-name")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start, run_name = checkpoint["iteration"], checkpoint["run_name"]
        print(f"resuming {path} at iteration {start}")
    train_tasks = K.task_split(args.size)[0]
    env = K.KeyDoorVectorEnv(args.num_envs, size=args.size, tasks=train_tasks[: args.num_envs], split="train")
    env.reset(seed=args.seed)
    writer = SummaryWriter(os.path.join("runs", run_name))
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items()))
    pending: list[list[dict]] = [[] for _ in range(args.num_envs)]  # trials since the last dataset chunk
    result: dict = {}
    bar = tqdm(range(start, args.iterations), initial=start, total=args.iterations, disable=not args.progress)
    for iteration in bar:
        # per-iteration generators: a resumed run draws what an uninterrupted one would have drawn
        rng = np.random.default_rng([args.seed, iteration])
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + iteration)
        tasks = train_tasks[rng.integers(len(train_tasks), size=args.num_envs)]
        started = time.time()
        buf = run_trials(model, env, tasks, args.episodes_per_trial, generator, device)
        stats = ppo_update(model, optimizer, buf, args, generator, device)
        env_steps = int(buf["active"].sum())
        done = iteration + 1
        step = done * args.num_envs * args.episodes_per_trial  # x axis: episodes of experience
        by_episode = episode_returns_by_index(buf, args.episodes_per_trial)
        writer.add_scalar("charts/trial_return", by_episode.sum(), step)
        writer.add_scalar("charts/return_first_500", first_500_return(trial_episodes(buf), args.num_envs), step)
        for i in (0, args.episodes_per_trial - 1):
            writer.add_scalar(f"charts/episode_{i + 1}_return", by_episode[i], step)
        for name, value in stats.items():
            writer.add_scalar(f"losses/{name}", value, step)
        writer.add_scalar("charts/SPS", env_steps / (time.time() - started), step)
        bar.set_postfix(ep1=f"{by_episode[0]:.2f}", ep10=f"{by_episode[-1]:.2f}")
        for i, history in enumerate(trials_to_histories(buf, tasks)):
            pending[i].append(history)
        if args.eval_every and done % args.eval_every == 0 or done == args.iterations:
            result = evaluate(model, args, device, args.seed)
            for i, value in enumerate(result["by_episode"]):
                writer.add_scalar(f"eval/episode_{i + 1}_return", value, step)
            writer.add_scalar("eval/return_first_500", result["first_500"], step)
            writer.add_scalar("eval/return_episodes_5_to_10", result["episodes_5_to_10"], step)
        if done % args.save_every == 0 or done == args.iterations:
            # dataset chunk first, then the checkpoint: a kill in between rewrites the same chunk
            first = done - len(pending[0]) + 1  # the chunk's first iteration names it: never reused
            for i in range(args.num_envs):
                history = {k: np.concatenate([h[k] for h in pending[i]]) for k in pending[i][0]}
                history_config = {"size": args.size, "style": "rl2", "light": False, "seed": args.seed, "run": i,
                                  "iterations": [first, done], "algorithm": "rl2-ppo"}
                # named after the run as well: two runs (another --exp-name, seed or size) never overwrite each other
                K.save_history(os.path.join(data_folder, f"{stem}__run_{i:05d}_it{first:06d}.npz"), history, history_config)
            pending = [[] for _ in range(args.num_envs)]
            checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": done,
                          "args": asdict(args), "model_config": asdict(config), "run_name": run_name}
            K.atomic_write(path, lambda f: torch.save(checkpoint, f))
    writer.close()
    if not result:  # nothing left to train (a finished run rerun): evaluate the checkpoint as it is
        result = evaluate(model, args, device, args.seed)
    # the held-out trials, in the layout of ad_eval.py's files (so one figure can show RL² beside AD)
    out = os.path.join(args.data_dir, "eval", f"{stem}__envs{args.eval_envs}_trial_seed{args.seed}.npz")
    meta = {"checkpoint": path, "iteration": max(start, args.iterations), "seed": args.seed,
            "size": args.size, "obs": "dark", "episodes_per_trial": args.episodes_per_trial, "algorithm": "rl2-ppo"}
    payload = {"tasks": result["tasks"], "episode_env": result["episodes"]["env"],
               "episode_return": result["episodes"]["return"], "episode_end_step": result["episodes"]["end_step"],
               "by_episode": result["by_episode"], "config": np.array(json.dumps(meta))}
    K.atomic_write(out, lambda f: np.savez_compressed(f, **payload))
    print(f"held-out tasks: return by episode {np.round(result['by_episode'], 2).tolist()}, "
          f"first 500 steps {result['first_500']:.2f}, episodes 5-10 {result['episodes_5_to_10']:.2f} -> {out}")
    return {"checkpoint": path, "eval": out, **result}



if __name__ == "__main__":
    K.run_cli(main, Args)
