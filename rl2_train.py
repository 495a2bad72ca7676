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
without p the policy often found the door and then missed it in later episodes (9x9: 1.83 over episodes
5-10 after 400 iterations, against a plateau near 1.7). Off by default: RL² is AD's baseline.

Files (stem = <exp_name>__<size>x<size>__<seed>): `data/rl2/<stem>__run_<env>_it<first iteration>.npz`,
its experience, the fifth dataset (`ad_train.py --dataset rl2`); `data/checkpoints/<stem>.pt`, from which
a rerun resumes bit for bit; `data/eval/<stem>__curve.csv`, the learning curve (a row per evaluation);
`data/eval/<stem>__<split><N>_trial_seed<seed>.npz`, the final held-out trials and a random policy's, in
ad_eval.py's layout. Settings are chosen on the 20 validation tasks, results reported on test tasks. A
run that has reached `--iterations` only evaluates its checkpoint on the split asked for.
"""

from __future__ import annotations

import json
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


# --- The model: the same pre-norm causal Transformer as ad_train.py, with a policy and a value head
@dataclass
class ModelConfig:
    obs_dim: int
    context: int
    n_layer: int
    n_head: int
    n_embd: int
    d_ff: int
    arrival: bool  # tokens carry p_{t-1}, the (x, y) the previous action led to


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head, self.context = config.n_head, config.context
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)

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
            # several new tokens over cached ones would need a block-causal mask, which the rollout never needs
            assert end <= self.context and (cache["len"] == 0 or T == 1), f"KV cache misuse: {cache['len']} + {T}"
            cache["k"][:, :, cache["len"] : end], cache["v"][:, :, cache["len"] : end] = k, v
            k, v, cache["len"] = cache["k"][:, :, :end], cache["v"][:, :, :end], end
        # causal over a window from its start; one token after a filled cache sees all of it
        y = F.scaled_dot_product_attention(q, k, v, is_causal=k.shape[2] == T)
        return self.proj(y.transpose(1, 2).reshape(B, T, E))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(config.n_embd), nn.LayerNorm(config.n_embd)
        self.attn = SelfAttention(config)
        self.mlp = nn.Sequential(
            nn.Linear(config.n_embd, config.d_ff), nn.GELU(), nn.Linear(config.d_ff, config.n_embd)
        )

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
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

    def forward(
        self, observations, prev_actions, prev_rewards, prev_dones, prev_arrivals=None, start: int = 0, caches=None
    ):
        """Inputs (B, T, ...) for positions start..start+T-1; `prev_arrivals` (B, T, 2), the scaled (x, y) the
        previous action led to, is read only by a model with `config.arrival`. Returns logits (B, T, 5), values (B, T)."""
        T = observations.shape[1]
        parts = [
            observations,
            F.one_hot(prev_actions, K.NUM_ACTIONS).to(observations.dtype),
            prev_rewards[..., None],
            prev_dones[..., None],
        ] + ([prev_arrivals] if self.config.arrival else [])
        features = torch.cat(parts, dim=-1)  # (B, T, obs_dim + 7 [+ 2])
        x = self.embed(features) + self.pos(torch.arange(start, start + T, device=observations.device))
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        x = self.ln_f(x)
        return self.policy(x), self.value(x)[..., 0]


# --- Rollout of one trial per env, and its episodes
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
    N, L = len(tasks), episodes * K.EPISODE_STEPS
    observations, _ = env.reset(options={"tasks": tasks})
    obs_dim = observations.shape[1]
    buf = {
        "observations": torch.zeros(N, L, obs_dim),
        "prev_arrivals": torch.zeros(N, L, 2),  # (N, L, obs_dim), (N, L, 2)
        **{k: torch.zeros(N, L) for k in ("prev_rewards", "prev_dones", "logprobs", "values", "rewards")},
        **{k: torch.zeros(N, L, dtype=torch.long) for k in ("prev_actions", "actions")},
        **{k: torch.zeros(N, L, dtype=torch.bool) for k in ("terminations", "truncations", "active")},
    }
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
        logits, values = model(
            obs_t[:, None].to(device),
            prev_action[:, None].to(device),
            prev_reward[:, None].to(device),
            prev_done[:, None].to(device),
            prev_arrival[:, None].to(device),
            start=t,
            caches=caches,
        )
        dist = torch.distributions.Categorical(logits=logits[:, 0].float().cpu())
        action = torch.multinomial(dist.probs, 1, generator=generator)[:, 0]
        observations, rewards, terminated, truncated, infos = env.step(action.numpy())
        ended = terminated | truncated  # (N,) bool: the episode ended with this action
        arrival = K.final_observations(observations, infos)[:, :2]  # (N, 2); at an episode's end, the cell it ended in
        buf["actions"][:, t], buf["logprobs"][:, t] = action, dist.log_prob(action)
        buf["values"][:, t], buf["rewards"][:, t] = values[:, 0].float().cpu(), torch.as_tensor(rewards)
        buf["terminations"][:, t], buf["truncations"][:, t] = torch.as_tensor(terminated), torch.as_tensor(truncated)
        buf["active"][:, t] = torch.as_tensor(active)
        finished += ended & active
        prev_action, prev_reward = action, torch.as_tensor(rewards)
        prev_done, prev_arrival = torch.as_tensor(ended, dtype=torch.float32), torch.as_tensor(arrival)
    buf["rewards"] *= buf["active"]
    return buf


def trial_metrics(buf: dict, episodes_per_trial: int) -> dict:
    """The trials' "episodes" (active steps only; flat "env", "return", "end_step" arrays), the mean over
    envs of each episode index's return "by_episode" (E,), "first_500" (per env the mean return of the
    episodes ended within 500 steps, `K.early_return`, then the mean over envs) and "episodes_5_to_10"."""
    num_envs, dones = len(buf["rewards"]), (buf["terminations"] | buf["truncations"]).numpy()
    episodes = K.stream_episodes(buf["rewards"].numpy(), dones, buf["active"].sum(1).numpy())
    # an episode lasts at most 50 steps, so every trial holds exactly its E episodes, env by env in order
    by_episode = episodes["return"].reshape(num_envs, episodes_per_trial).mean(0, dtype=np.float64)
    return {
        "episodes": episodes,
        "by_episode": by_episode,
        "first_500": float(np.nanmean(K.early_return(episodes, num_envs))),
        "episodes_5_to_10": float(by_episode[4:].mean()) if episodes_per_trial > 4 else float("nan"),
    }


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
    tokens = {
        k: buf[k][:, :length] for k in ("observations", "prev_actions", "prev_rewards", "prev_dones", "prev_arrivals")
    }
    N = mask.shape[0]
    per_batch = max(1, N // args.num_minibatches)
    stats = {}
    for _ in range(args.update_epochs):
        order = torch.randperm(N, generator=generator)
        for lo in range(0, N, per_batch):
            idx = order[lo : lo + per_batch]
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
            stats = {
                "policy_loss": masked(pg).item(),
                "value_loss": masked(v_loss).item(),
                "entropy": masked(entropy).item(),
                "approx_kl": masked((ratio - 1) - (logp - buf["logprobs"][idx, :length].to(device))).item(),
            }
    return stats


def trials_to_histories(buf: dict, tasks: np.ndarray) -> list[dict]:
    """Each env's trial as contract arrays (active steps only)."""
    keys, out = ("observations", "actions", "rewards", "terminations", "truncations"), []
    for i, steps in enumerate(buf["active"].sum(1).tolist()):
        out.append({**{k: buf[k][i, :steps].numpy() for k in keys}, "tasks": np.repeat(tasks[i][None], steps, axis=0)})
    return out


# --- Held-out evaluation, its learning curve and the checkpoint
def evaluate(model: ActorCritic, args: Args, tasks: np.ndarray, device: torch.device) -> dict:
    """One trial on each held-out task of `tasks` (N, 4), actions sampled with a fixed seed."""
    env = K.KeyDoorVectorEnv(len(tasks), size=args.size, tasks=tasks, split="all")
    env.reset(seed=args.seed)
    model.eval()
    buf = run_trials(model, env, tasks, args.episodes_per_trial, torch.Generator().manual_seed(args.seed), device)
    model.train()
    return {**trial_metrics(buf, args.episodes_per_trial), "tasks": tasks}


def random_trials(tasks: np.ndarray, size: int, episodes: int, seed: int) -> dict:
    """A uniform-random policy for one trial of `episodes` episodes on each task: the floor of the eval file."""
    N, L = len(tasks), episodes * K.EPISODE_STEPS
    env = K.KeyDoorVectorEnv(N, size=size, tasks=tasks, split="all")
    env.reset(seed=seed)
    actions = np.random.default_rng(seed).integers(0, K.NUM_ACTIONS, size=(L, N))
    rewards, dones = np.zeros((N, L), dtype=np.float32), np.zeros((N, L), dtype=bool)
    for t in range(L):
        _, rewards[:, t], terminated, truncated, _ = env.step(actions[t])
        dones[:, t] = terminated | truncated
    # each env's trial ends with its `episodes`-th episode (episodes last at most 50 steps, so it always does)
    lengths = np.argmax(np.cumsum(dones, axis=1) >= episodes, axis=1) + 1
    return K.stream_episodes(rewards, dones, lengths)


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


def load_checkpoint(path: str, model_config: ModelConfig, device: torch.device) -> dict:
    """The checkpoint at `path`, checked against the model of this run; a one-line error otherwise."""
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or holding objects other than tensors
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}); move it away") from None
    keys = {"model", "optimizer", "iteration", "args", "model_config", "run_name", "seconds"}
    if (
        not isinstance(checkpoint, dict)
        or not keys <= checkpoint.keys()
        or set(checkpoint["model_config"]) != set(asdict(model_config))
    ):
        raise ValueError(f"{path}: not a checkpoint of this version of rl2_train.py; move it away or change --exp-name")
    if checkpoint["model_config"] != asdict(model_config):
        raise ValueError(f"{path} holds a model of another shape; move it away or change --exp-name")
    return checkpoint


def validate(args: Args) -> None:
    """One-line errors for bad flags (the eval split and envs are checked by `K.eval_tasks`)."""
    for ok, message in [
        (
            min(args.iterations, args.num_envs, args.episodes_per_trial) >= 1,
            "--iterations, --num-envs and --episodes-per-trial must be >= 1",
        ),
        (1 <= args.num_minibatches <= args.num_envs, "--num-minibatches must lie in 1..--num-envs"),
        (args.n_head >= 1 and args.n_embd % args.n_head == 0, "--n-embd must be divisible by --n-head"),
        (
            min(args.update_epochs, args.save_every, args.n_layer, args.d_ff) >= 1,
            "--update-epochs, --save-every, --n-layer and --d-ff must be >= 1",
        ),
        (args.eval_every >= 0, "--eval-every must be >= 0"),
        (min(args.lr, args.max_grad_norm, args.clip_coef) > 0, "--lr, --max-grad-norm and --clip-coef must be > 0"),
        (
            0 <= min(args.gamma, args.gae_lambda) <= max(args.gamma, args.gae_lambda) <= 1,
            "--gamma and --gae-lambda must lie in [0, 1]",
        ),
    ]:
        if not ok:
            raise ValueError(message)
    K.validate_size(args.size)


def main(args: Args) -> dict:
    # 1. every input and output checked before any work
    validate(args)
    eval_tasks = K.eval_tasks(args.size, args.eval_split, args.eval_envs, args.eval_seed or args.seed)  # (eval_envs, 4)
    data_folder, checkpoint_folder, eval_folder = (
        os.path.join(args.data_dir, name) for name in ("rl2", "checkpoints", "eval")
    )
    for folder in (data_folder, checkpoint_folder, eval_folder):
        K.check_writable(folder)
        K.remove_stale_parts(folder)  # left by a run killed while writing
    K.check_writable("runs")  # TensorBoard
    stem = (
        f"{args.exp_name}__{args.size}x{args.size}__{args.seed}"  # names the checkpoint, dataset chunks and eval files
    )
    path = os.path.join(checkpoint_folder, f"{stem}.pt")
    curve_path = os.path.join(eval_folder, f"{stem}__curve.csv")
    episode_columns = [f"episode_{i + 1}" for i in range(args.episodes_per_trial)]
    header = ",".join(["iteration", "episodes", "first_500", "episodes_5_to_10"] + episode_columns + ["minutes"])
    out = os.path.join(
        eval_folder, f"{stem}__{args.eval_split}{args.eval_envs}_trial_seed{args.eval_seed or args.seed}.npz"
    )

    # 2. the model, resumed from the checkpoint if there is one
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
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
    model = ActorCritic(model_config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, eps=1e-5)
    start, seconds, run_name = (
        0,
        0.0,
        f"KeyDoor-Dark-{args.size}x{args.size}__{args.exp_name}__{args.seed}__{int(time.time())}",
    )
    if os.path.exists(path):
        checkpoint = load_checkpoint(path, model_config, device)
        start, seconds, run_name = checkpoint["iteration"], checkpoint["seconds"], checkpoint["run_name"]
        # one curve, one set of tasks: training goes on with the evaluation it started with
        split, envs, seed = (checkpoint["args"].get(k, 0) for k in ("eval_split", "eval_envs", "eval_seed"))
        if start < args.iterations and (split, envs, seed) != (args.eval_split, args.eval_envs, args.eval_seed):
            raise ValueError(
                f"{path}: its learning curve is measured on {envs} {split} tasks; "
                f"resume its training with --eval-split {split} --eval-envs {envs} --eval-seed {seed}"
            )
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        print(f"resuming {path} at iteration {start}")
    curve = read_curve(curve_path, header, start) if start < args.iterations else []  # rows as CSV lines

    # 3. training: one trial per env on fresh train tasks, then a PPO update
    train_tasks = K.task_split(args.size, "train")
    env = K.KeyDoorVectorEnv(args.num_envs, size=args.size, tasks=train_tasks[: args.num_envs], split="train")
    env.reset(seed=args.seed)
    if start < args.iterations:  # (a finished run rerun only evaluates: no TensorBoard run)
        writer = SummaryWriter(os.path.join("runs", run_name))
        writer.add_text(
            "hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items())
        )
    pending: list[list[dict]] = [[] for _ in range(args.num_envs)]  # trials since the last dataset chunk
    result: dict = {}
    clock = time.time() - seconds  # the run's training wall-clock, pauses between resumes left out
    bar = tqdm(range(start, args.iterations), initial=start, total=args.iterations, disable=not args.progress)
    for iteration in bar:
        # per-iteration generators: a resumed run draws what an uninterrupted one would have drawn
        rng = np.random.default_rng([args.seed, iteration])
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + iteration)
        tasks = train_tasks[rng.integers(len(train_tasks), size=args.num_envs)]
        started = time.time()
        buf = run_trials(model, env, tasks, args.episodes_per_trial, generator, device)
        stats = ppo_update(model, optimizer, buf, args, generator, device)
        completed = iteration + 1  # iterations completed, counting this one
        step = completed * args.num_envs * args.episodes_per_trial  # x axis: episodes of experience
        metrics = trial_metrics(buf, args.episodes_per_trial)
        scalars = {
            "charts/trial_return": metrics["by_episode"].sum(),
            "charts/return_first_500": metrics["first_500"],
            "charts/episode_1_return": metrics["by_episode"][0],
            f"charts/episode_{args.episodes_per_trial}_return": metrics["by_episode"][-1],
            "charts/SPS": int(buf["active"].sum()) / (time.time() - started),
            **{f"losses/{name}": value for name, value in stats.items()},
        }
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, step)
        bar.set_postfix(ep1=f"{metrics['by_episode'][0]:.2f}", ep10=f"{metrics['by_episode'][-1]:.2f}")
        for i, history in enumerate(trials_to_histories(buf, tasks)):
            pending[i].append(history)
        if args.eval_every and completed % args.eval_every == 0 or completed == args.iterations:
            result = evaluate(model, args, eval_tasks, device)
            values = [result["first_500"], result["episodes_5_to_10"], *result["by_episode"]]
            tags = ["eval/return_first_500", "eval/return_episodes_5_to_10"] + [
                f"eval/{c}_return" for c in episode_columns
            ]
            for tag, value in zip(tags, values):
                writer.add_scalar(tag, value, step)
            minutes = f"{(time.time() - clock) / 60:.1f}"  # the only column a resumed run does not repeat bit for bit
            curve.append(",".join([str(completed), str(step)] + [repr(float(v)) for v in values] + [minutes]))
            # the whole file, every time: the figures script may read it at any moment
            K.atomic_write(curve_path, lambda f: f.write("".join(line + "\n" for line in [header] + curve).encode()))
        if completed % args.save_every == 0 or completed == args.iterations:
            # dataset chunk first, then the checkpoint: a kill in between rewrites the same chunk
            first = completed - len(pending[0]) + 1  # the chunk's first iteration names it: never reused
            for i in range(args.num_envs):
                history = {k: np.concatenate([h[k] for h in pending[i]]) for k in pending[i][0]}
                history_config = {
                    "size": args.size,
                    "style": "rl2",
                    "light": False,
                    "seed": args.seed,
                    "run": i,
                    "iterations": [first, completed],
                    "algorithm": "rl2-ppo",
                }
                # named after the run as well: two runs (another --exp-name, seed or size) never overwrite each other
                K.save_history(
                    os.path.join(data_folder, f"{stem}__run_{i:05d}_it{first:06d}.npz"), history, history_config
                )
            pending = [[] for _ in range(args.num_envs)]
            checkpoint = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "iteration": completed,
                "args": asdict(args),
                "model_config": asdict(model_config),
                "run_name": run_name,
                "seconds": time.time() - clock,
            }
            K.atomic_write(path, lambda f: torch.save(checkpoint, f))
    if start < args.iterations:
        writer.close()

    # 4. the held-out trials, in the layout of ad_eval.py's files (one figure can show RL² beside AD)
    if not result:  # nothing left to train (a finished run rerun): evaluate the checkpoint as it is
        result = evaluate(model, args, eval_tasks, device)
    floor = random_trials(eval_tasks, args.size, args.episodes_per_trial, args.seed)
    meta = {
        "algorithm": "rl2",
        "checkpoint": path,
        "model_config": asdict(model_config),
        "split": args.eval_split,
        "num_envs": args.eval_envs,
        "steps": model_config.context,
        "seed": args.seed,
        "size": args.size,
        "obs": "dark",
        "episodes_per_trial": args.episodes_per_trial,
        "iteration": max(start, args.iterations),
    }
    payload = {
        "tasks": eval_tasks,
        "meta": np.array(json.dumps(meta)),
        **{f"episode_{k}": v for k, v in result["episodes"].items()},
        **{f"random_episode_{k}": v for k, v in floor.items()},
    }
    K.atomic_write(out, lambda f: np.savez_compressed(f, **payload))
    random_500 = float(np.nanmean(K.early_return(floor, args.eval_envs)))
    print(
        f"{args.eval_split} tasks ({args.eval_envs}): return by episode {np.round(result['by_episode'], 2).tolist()}, first 500 "
        f"steps {result['first_500']:.2f} (random {random_500:.2f}), episodes 5-10 {result['episodes_5_to_10']:.2f} -> {out}"
    )
    return {"checkpoint": path, "eval": out, "curve": curve_path, **result}


if __name__ == "__main__":
    K.run_cli(main, Args)
