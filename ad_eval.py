"""In-context evaluation of AD checkpoints on held-out Key-To-Door tasks (the report's protocol).

    python ad_eval.py --checkpoints data/checkpoints/ad__nx1-light__dark__ctx200__1.pt
    python ad_eval.py --checkpoints a.pt b.pt --steps 5000 --plot   # side by side, PNG under data/eval/

For each checkpoint, `--num-envs` held-out test tasks run together in one vector env for `--steps`
env steps, with the same task after every reset. The model sees its own history (o_t, a_{t-1},
r_{t-1}, d_{t-1}, and p_{t-1} if it was trained with `--arrival-token`) and samples its next
action. No gradient step is taken: any improvement is in-context learning.

The history is trimmed at the model's context C. Because position embeddings are learned, the
window cannot slide by one token on a KV cache, so the fast path keeps a cache of up to C tokens
and, when it is full, refills it from the last C/2 tokens at positions 0..C/2-1. Every prediction
is then made on a window of C/2 to C of the latest tokens, at positions the model was trained on,
for about two token computations per step instead of C. `--full-recompute` runs the reference path:
the same windows, recomputed from scratch at every step.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

import keydoor_env as K
from ad_train import (FIRST_PREV_ACTION, FIRST_PREV_DONE, DecisionModel, env_arrivals, load_checkpoint,
                      model_from_checkpoint)


@dataclass
class Args:
    checkpoints: tuple[str, ...]
    """`.pt` checkpoints written by ad_train.py"""
    num_envs: int = 20
    """held-out tasks evaluated together, one env each"""
    steps: int = 17_500
    """environment steps per env"""
    seed: int = 1
    """seed of task choice and action sampling: the same seed gives the same returns"""
    greedy: bool = False
    """take the argmax action instead of sampling"""
    env_obs: Optional[Literal["dark", "light"]] = None
    """observation layout of the env (default: the checkpoint's); must match the checkpoint"""
    allow_train_tasks: bool = False
    """allow more envs than held-out tasks by adding train tasks"""
    full_recompute: bool = False
    """recompute every window from scratch (the reference path) instead of the KV cache"""
    out_dir: str = "data/eval"
    """where the per-checkpoint .npz (and the PNG) are written"""
    source_runs: int = 20
    """source learning histories read for the baseline (0: none)"""
    log_every: int = 250
    """env steps per point of TensorBoard's eval/return"""
    plot: bool = False
    """write a PNG of episode returns over env steps (needs matplotlib)"""
    cuda: bool = True
    """use CUDA when available"""
    progress: bool = True
    """show a progress bar"""


# ----------------------------------------------------------------------------------------------
# Rollout: the cached fast path and the full-recompute reference, on the same windows
# ----------------------------------------------------------------------------------------------
def window_starts(steps: int, context: int) -> np.ndarray:
    """Start of the window on which the prediction at step t is made: the cache's refill schedule.

    The window grows from the start until it holds `context` tokens; the next token then starts a
    new window of the last context//2 + ... tokens: from then on windows span context//2 .. context.
    """
    starts, start = np.zeros(steps, dtype=np.int64), 0
    keep = max(1, context // 2)
    for t in range(steps):
        if t - start + 1 > context:
            start = t + 1 - keep
        starts[t] = start
    return starts


class HistoryBuffer:
    """The tokens fed to the model so far, (N, steps, ...) on the model's device, built exactly as
    ad_train.select_steps builds them from a history file."""

    def __init__(self, num_envs: int, steps: int, obs_dim: int, device: torch.device):
        self.observations = torch.zeros((num_envs, steps, obs_dim), device=device)
        self.prev_actions = torch.full((num_envs, steps), FIRST_PREV_ACTION, dtype=torch.long, device=device)
        self.prev_rewards = torch.zeros((num_envs, steps), device=device)
        self.prev_dones = torch.zeros((num_envs, steps), device=device)
        self.prev_dones[:, 0] = FIRST_PREV_DONE
        # read by --arrival-token models only; the first is FIRST_PREV_ARRIVAL, cell (0, 0), scaled: zeros
        self.prev_arrivals = torch.zeros((num_envs, steps, 2), device=device)

    def window(self, lo: int, hi: int) -> dict[str, torch.Tensor]:
        return {"observations": self.observations[:, lo:hi], "prev_actions": self.prev_actions[:, lo:hi],
                "prev_rewards": self.prev_rewards[:, lo:hi], "prev_dones": self.prev_dones[:, lo:hi],
                "prev_arrivals": self.prev_arrivals[:, lo:hi]}


class Policy:
    """Next-action logits of the model on the growing history, by KV cache or by full recompute."""

    def __init__(self, model: DecisionModel, history: HistoryBuffer, steps: int, full_recompute: bool):
        self.model, self.history, self.full_recompute = model, history, full_recompute
        self.starts = window_starts(steps, model.config.context)
        self.caches: list[dict] = []
        self.device = history.observations.device

    @torch.no_grad()
    def logits(self, t: int) -> torch.Tensor:
        """Logits (N, 5) of the action at step t; token t must already be in the history."""
        start = int(self.starts[t])
        if self.full_recompute:
            return self.model(**self.history.window(start, t + 1))[:, -1]
        if t == 0 or start != self.starts[t - 1]:  # a new window: refill the cache from its tokens
            self.caches = [{} for _ in self.model.blocks]
            return self.model(**self.history.window(start, t + 1), caches=self.caches)[:, -1]
        position = torch.tensor([t - start], device=self.device)
        return self.model(**self.history.window(t, t + 1), positions=position, caches=self.caches)[:, -1]


@torch.no_grad()
def rollout(model: DecisionModel, tasks: np.ndarray, steps: int, size: int, seed: int, greedy: bool,
            full_recompute: bool, device: torch.device, progress: bool = False, desc: str = "") -> dict:
    """Run `model` in context on `tasks` (N, 4). Returns per-episode arrays (env index, return, end
    step) and, under "history", the tokens the model was fed."""
    model.eval()
    N, obs_dim = len(tasks), model.config.obs_dim
    env = K.KeyDoorVectorEnv(N, size=size, light=obs_dim == K.LIGHT_OBS_DIM, tasks=tasks, split="all")
    observations, _ = env.reset(seed=seed)
    history = HistoryBuffer(N, steps, obs_dim, device)
    policy = Policy(model, history, steps, full_recompute)
    generator = torch.Generator(device=device).manual_seed(seed)
    episode_return = np.zeros(N)
    episodes = {"env": [], "return": [], "end_step": []}
    for t in tqdm(range(steps), disable=not progress, desc=desc, mininterval=1.0):
        history.observations[:, t] = torch.as_tensor(observations, device=device)
        logits = policy.logits(t).float()
        if greedy:
            actions = logits.argmax(-1)
        else:
            actions = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]
        actions_np = actions.cpu().numpy()
        observations, rewards, terminated, truncated, infos = env.step(actions_np)
        done = terminated | truncated
        if t + 1 < steps:
            history.prev_actions[:, t + 1] = actions
            history.prev_rewards[:, t + 1] = torch.as_tensor(rewards, device=device)
            history.prev_dones[:, t + 1] = torch.as_tensor(done, dtype=torch.float32, device=device)
            history.prev_arrivals[:, t + 1] = torch.as_tensor(env_arrivals(observations, done, infos), device=device)
        episode_return += rewards
        for i in np.flatnonzero(done):
            episodes["env"].append(i), episodes["return"].append(episode_return[i]), episodes["end_step"].append(t + 1)
            episode_return[i] = 0.0
    return {"env": np.array(episodes["env"], dtype=np.int64), "return": np.array(episodes["return"], dtype=np.float32),
            "end_step": np.array(episodes["end_step"], dtype=np.int64), "history": history}


def random_rollout(tasks: np.ndarray, steps: int, size: int, seed: int) -> dict:
    """The uniform-random policy on the same tasks: the floor of the table."""
    N = len(tasks)
    env = K.KeyDoorVectorEnv(N, size=size, tasks=tasks, split="all")
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    episode_return, episodes = np.zeros(N), {"env": [], "return": [], "end_step": []}
    for t in range(steps):
        _, rewards, terminated, truncated, _ = env.step(rng.integers(0, K.NUM_ACTIONS, N))
        episode_return += rewards
        for i in np.flatnonzero(terminated | truncated):
            episodes["env"].append(i), episodes["return"].append(episode_return[i]), episodes["end_step"].append(t + 1)
            episode_return[i] = 0.0
    return {k: np.array(v) for k, v in episodes.items()}


def source_episodes(folder: str, runs: int, steps: int) -> Optional[dict]:
    """The source agents' own learning curves: their first `steps` steps, one env per history."""
    if runs <= 0 or not os.path.isdir(folder):
        return None
    names = sorted(n for n in os.listdir(folder) if n.endswith(".npz") and not n.startswith("."))[:runs]
    episodes = {"env": [], "return": [], "end_step": []}
    for i, name in enumerate(names):
        history, _ = K.load_history(os.path.join(folder, name))
        dones = (history["terminations"] | history["truncations"])[:steps]
        returns, ends = K.episode_returns(history["rewards"][:steps], dones)
        episodes["env"] += [i] * len(returns)
        episodes["return"] += returns.tolist()
        episodes["end_step"] += (ends + 1).tolist()
    return {k: np.array(v) for k, v in episodes.items()} if names else None


# ----------------------------------------------------------------------------------------------
# Metrics: per env first, then across envs
# ----------------------------------------------------------------------------------------------
def per_env_metrics(episodes: dict, num_envs: int, window: int = 10, threshold: float = 1.8) -> dict:
    """Per env: mean return of the episodes that ended within the first 500 steps, mean of its last 5
    episodes, and the env step at which the moving average of `window` episodes first reaches 1.8."""
    first500, last5, solved = np.full(num_envs, np.nan), np.full(num_envs, np.nan), np.full(num_envs, np.inf)
    for i in range(num_envs):
        mask = episodes["env"] == i
        returns, ends = episodes["return"][mask], episodes["end_step"][mask]
        if len(returns) == 0:
            continue
        early = returns[ends <= 500]
        first500[i] = early.mean() if len(early) else np.nan
        last5[i] = returns[-5:].mean()
        reached = K.first_reaching(returns, ends, window, threshold)
        if reached is not None:
            solved[i] = reached
    return {"first500": first500, "last5": last5, "steps_to_1.8": solved}


def summary_row(name: str, episodes: dict, num_envs: int) -> dict:
    metrics = per_env_metrics(episodes, num_envs)
    reached = np.isfinite(metrics["steps_to_1.8"])
    return {"name": name, "first500": float(np.nanmean(metrics["first500"])), "last5": float(np.nanmean(metrics["last5"])),
            "reached": int(reached.sum()), "envs": num_envs,
            "median_steps_to_1.8": float(np.median(metrics["steps_to_1.8"])) if reached.any() else float("inf")}


def format_table(rows: list[dict]) -> str:
    lines = [f"{'policy':<44} {'return, first 500 steps':>24} {'last 5 episodes':>16} {'steps to MA(10) 1.8':>26}",
             "-" * 113]
    for row in rows:
        steps = f"{row['median_steps_to_1.8']:,.0f}" if np.isfinite(row["median_steps_to_1.8"]) else "never"
        steps += f" (median; {row['reached']}/{row['envs']} envs)"
        lines.append(f"{row['name'][:44]:<44} {row['first500']:>24.2f} {row['last5']:>16.2f} {steps:>26}")
    return "\n".join(lines)


def binned_curve(episodes: dict, num_envs: int, steps: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per bin of `width` env steps: mean over envs of each env's mean episode return in the bin."""
    edges = np.arange(0, steps + width, width)
    centers, values = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (episodes["end_step"] > lo) & (episodes["end_step"] <= hi)
        per_env = [episodes["return"][in_bin & (episodes["env"] == i)].mean() for i in range(num_envs)
                   if (in_bin & (episodes["env"] == i)).any()]
        if per_env:
            centers.append(hi), values.append(np.mean(per_env))
    return np.array(centers), np.array(values)


def plot(results: list[dict], random_episodes: dict, path: str) -> None:
    """Figure 3 of the report: episode returns over env steps for all envs, with a binned mean line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install matplotlib") from None
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), sharey=True, squeeze=False)
    for ax, result in zip(axes[0], results):
        episodes, steps, n = result["episodes"], result["steps"], result["num_envs"]
        ax.scatter(episodes["end_step"], episodes["return"], s=2, alpha=0.15, color="tab:blue", label="episodes")
        x, y = binned_curve(episodes, n, steps, max(50, steps // 35))
        ax.plot(x, y, color="tab:red", lw=2, label="mean over envs")
        rx, ry = binned_curve(random_episodes, n, steps, max(50, steps // 35))
        ax.plot(rx, ry, color="gray", lw=1, ls="--", label="random")
        ax.set_title(result["title"], fontsize=9)
        ax.set_xlabel("env steps")
        ax.set_ylim(-0.1, 2.1)
    axes[0][0].set_ylabel("episode return")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    K.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
def main(args: Args) -> list[dict]:
    if args.num_envs < 1 or args.steps < 1 or args.log_every < 1:
        raise ValueError(f"--num-envs, --steps and --log-every must be >= 1, got {args.num_envs}, {args.steps}, {args.log_every}")
    if not args.checkpoints:
        raise ValueError("--checkpoints needs at least one .pt file")
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    checkpoints = [(path, load_checkpoint(path, map_location=device)) for path in args.checkpoints]  # fail early
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError("--plot needs matplotlib: pip install matplotlib") from None
    results, rows = [], []
    random_cache: dict = {}
    for path, checkpoint in checkpoints:
        data = checkpoint["data"]
        layout = "light" if data["obs_dim"] == K.LIGHT_OBS_DIM else "dark"
        if args.env_obs is not None and args.env_obs != layout:
            raise ValueError(f"{path} was trained on {layout} observations, the env was asked for {args.env_obs}")
        size = data["size"]
        tasks = K.eval_tasks(size, args.num_envs, args.seed, args.allow_train_tasks)
        model = model_from_checkpoint(checkpoint).to(device)
        name = os.path.splitext(os.path.basename(path))[0]
        start = time.time()
        episodes = rollout(model, tasks, args.steps, size, args.seed, args.greedy, args.full_recompute, device,
                           progress=args.progress, desc=name)
        seconds = time.time() - start
        # the settings are in the name, so that another evaluation never overwrites this one
        out = os.path.join(args.out_dir, f"{name}__envs{args.num_envs}_steps{args.steps}_seed{args.seed}"
                                         f"{'_greedy' if args.greedy else ''}.npz")
        meta = {"checkpoint": path, "steps": args.steps, "seed": args.seed, "greedy": args.greedy, "size": size,
                "obs": layout, "context": model.config.context, "arrival": model.config.arrival,
                "full_recompute": args.full_recompute,
                "split": "test" if args.num_envs <= len(K.task_split(size)[1]) else "test+train", "seconds": seconds}
        payload = {"tasks": tasks, "episode_env": episodes["env"], "episode_return": episodes["return"],
                   "episode_end_step": episodes["end_step"], "config": np.array(json.dumps(meta))}
        K.atomic_write(out, lambda f: np.savez_compressed(f, **payload))

        writer = SummaryWriter(os.path.join("runs", f"{checkpoint.get('run_name', name)}__eval__{args.seed}"))
        for step, value in zip(*binned_curve(episodes, args.num_envs, args.steps, args.log_every)):
            writer.add_scalar("eval/return", value, int(step))
        writer.close()

        key = (size, args.steps)
        if key not in random_cache:
            random_cache[key] = random_rollout(tasks, args.steps, size, args.seed)
        table = [summary_row(f"{name} (ctx {model.config.context})", episodes, args.num_envs),
                 summary_row("random policy", random_cache[key], args.num_envs)]
        source = source_episodes(os.path.join(os.path.dirname(os.path.dirname(path)), data["dataset"]),
                                 args.source_runs, args.steps)
        if source is not None:
            table.append(summary_row(f"source agents ({data['dataset']}, own tasks)", source, int(source["env"].max()) + 1))
        print(f"\n{path}: {args.num_envs} held-out tasks x {args.steps:,} steps in {seconds:.0f} s -> {out}")
        print(format_table(table))
        rows.append(table[0])
        results.append({"episodes": episodes, "steps": args.steps, "num_envs": args.num_envs, "row": table[0],
                        "title": f"{name}\nctx {model.config.context}: first 500 {table[0]['first500']:.2f}, "
                                 f"last 5 {table[0]['last5']:.2f}", "out": out})
    if args.plot:
        names = "__".join(os.path.splitext(os.path.basename(p))[0] for p in args.checkpoints)[:150]
        png = os.path.join(args.out_dir, f"{names}__envs{args.num_envs}_steps{args.steps}_seed{args.seed}"
                                         f"{'_greedy' if args.greedy else ''}.png")
        plot(results, random_cache[(checkpoints[-1][1]["data"]["size"], args.steps)], png)
        print(f"figure: {png}")
    return rows


if __name__ == "__main__":
    K.run_cli(main, Args)
