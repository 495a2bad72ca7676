"""In-context evaluation of AD checkpoints on held-out Key-To-Door tasks (the report's protocol).

    python ad_eval.py --checkpoints data/checkpoints/ad__nx1-light__dark__ctx200__1.pt   # 100 test tasks
    python ad_eval.py --checkpoints a.pt b.pt --split validation --num-envs 20 --plot    # choosing settings

For each checkpoint, `--num-envs` held-out tasks run together in one batch for `--steps` env steps,
with the same task after every reset. The model sees its own history (o_t, a_{t-1}, r_{t-1},
d_{t-1}, and p_{t-1} if it was trained with `--arrival-token`), trimmed at its context, and samples
its next action (`ad_train.rollout`). No gradient step is taken: any improvement is in-context
learning.

The protocol: the held-out tasks are split once into a fixed validation set of 20 tasks, on which
settings are chosen, and a test set (the rest), on which results are reported. Every metric is
computed per env first, then averaged over envs, with a 95% confidence interval over envs. Each
evaluation file holds the model's episodes and a uniform-random policy's on the same tasks.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

import keydoor_env as K
from ad_train import load_checkpoint, model_from_checkpoint, rollout


@dataclass
class Args:
    checkpoints: tuple[str, ...]
    """`.pt` checkpoints written by ad_train.py"""
    split: Literal["validation", "test"] = "test"
    """held-out tasks to run on: validation (20 fixed tasks, for choosing settings) or test (for reporting)"""
    num_envs: int = 100
    """tasks evaluated together, one env each (at most the split's size: 20 validation; test 35 at 5x5, 206 at 7x7, 612 at 9x9)"""
    steps: int = 17_500
    """environment steps per env"""
    seed: int = 1
    """seed of the test-task choice and of action sampling: the same seed gives the same returns"""
    greedy: bool = False
    """take the argmax action instead of sampling"""
    full_recompute: bool = False
    """recompute every window from scratch (the reference path) instead of the KV cache"""
    out_dir: str | None = None
    """where the evaluation files (and the PNG) go; default: <data dir>/eval for <data dir>/checkpoints/*.pt, else eval/ beside the checkpoint"""
    source_runs: int = 20
    """source learning histories read for the baseline row (0: none)"""
    curve_bin: int = 250
    """env steps per point of TensorBoard's eval/return curve"""
    plot: bool = False
    """write a PNG of episode returns over env steps"""
    cuda: bool = True
    """use CUDA when available"""
    progress: bool = True
    """show a progress bar"""


def random_rollout(tasks: np.ndarray, steps: int, size: int, seed: int) -> dict:
    """The uniform-random policy on the same tasks: the floor of every table."""
    env = K.KeyDoorVectorEnv(len(tasks), size=size, tasks=tasks, split="all")
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    rewards, dones = np.zeros((len(tasks), steps), np.float32), np.zeros((len(tasks), steps), bool)
    for t in range(steps):
        _, rewards[:, t], terminations, truncations, _ = env.step(rng.integers(0, K.NUM_ACTIONS, len(tasks)))
        dones[:, t] = terminations | truncations
    return K.stream_episodes(rewards, dones)


def source_histories(folder: str, runs: int, size: int) -> list[dict]:
    """The first `runs` source learning histories, read (and checked: the checkpoint's grid) before any rollout."""
    histories = []
    for path in K.history_paths(folder)[:runs] if runs > 0 and os.path.isdir(folder) else []:
        history, history_config = K.load_history(path)
        if history_config.get("size") != size:
            raise ValueError(
                f"{path} is a {history_config.get('size')}x{history_config.get('size')} run, the checkpoint "
                f"was trained on {size}x{size}; pass --source-runs 0 or fix the dataset folder"
            )
        histories.append(history)
    return histories


def source_episodes(histories: list[dict], steps: int) -> dict:
    """The source agents' own learning curves over their first `steps` steps, one env per history."""
    lengths = np.array([min(steps, len(h["rewards"])) for h in histories])
    rewards, dones = (
        np.zeros((len(histories), lengths.max()), np.float32),
        np.zeros((len(histories), lengths.max()), bool),
    )
    for i, (history, length) in enumerate(zip(histories, lengths)):
        rewards[i, :length] = history["rewards"][:length]
        dones[i, :length] = (history["terminations"] | history["truncations"])[:length]
    return K.stream_episodes(rewards, dones, lengths)


# ----------------------------------------------------------------------------------------------
# Metrics: per env first, then across envs, with a confidence interval over envs
# ----------------------------------------------------------------------------------------------
def per_env_metrics(episodes: dict, num_envs: int) -> dict:
    """Per env: mean return of the episodes that ended within the first 500 steps, mean of its last 5
    episodes, and the env step at which it first averages 1.8 over 10 episodes (inf: never)."""
    last5, solved = np.full(num_envs, np.nan), np.full(num_envs, np.inf)
    for i in range(num_envs):
        mask = episodes["env"] == i
        returns, ends = episodes["return"][mask], episodes["end_step"][mask]
        if len(returns):
            last5[i] = returns[-5:].mean()
            reached = K.first_reaching(returns, ends)
            solved[i] = np.inf if reached is None else reached
    return {"first500": K.early_return(episodes, num_envs), "last5": last5, "steps_to_1.8": solved}


def mean_and_interval(values: np.ndarray) -> tuple[float, float]:
    """Mean over envs and the half-width of its 95% confidence interval (Student's t, NaN envs left out)."""
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return (float(values.mean()) if len(values) else float("nan")), float("nan")
    df, z = len(values) - 1, 1.959964
    t = z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)  # Cornish-Fisher: t_0.975(df)
    return float(values.mean()), float(t * values.std(ddof=1) / math.sqrt(len(values)))


def summary_row(name: str, episodes: dict, num_envs: int) -> dict:
    metrics = per_env_metrics(episodes, num_envs)
    reached = np.isfinite(metrics["steps_to_1.8"])
    first500, first500_ci = mean_and_interval(metrics["first500"])
    last5, last5_ci = mean_and_interval(metrics["last5"])
    return {
        "name": name,
        "first500": first500,
        "first500_ci": first500_ci,
        "last5": last5,
        "last5_ci": last5_ci,
        "reached": int(reached.sum()),
        "envs": num_envs,
        "median_steps_to_1.8": float(np.median(metrics["steps_to_1.8"])) if reached.any() else float("inf"),
    }


def format_table(rows: list[dict]) -> str:
    lines = [
        f"{'policy':<44} {'first 500 steps (95% CI)':>25} {'last 5 episodes':>16} {'steps to MA(10) 1.8':>28}",
        "-" * 116,
    ]
    for row in rows:
        steps = f"{row['median_steps_to_1.8']:,.0f}" if np.isfinite(row["median_steps_to_1.8"]) else "never"
        steps += f" (median; {row['reached']}/{row['envs']} envs)"
        lines.append(
            f"{row['name'][:44]:<44} {row['first500']:>16.2f} ± {row['first500_ci']:.2f}"
            f" {row['last5']:>9.2f} ± {row['last5_ci']:.2f} {steps:>28}"
        )
    return "\n".join(lines)


def binned_curve(episodes: dict, num_envs: int, steps: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per bin of `width` env steps: mean over envs of each env's mean episode return in the bin."""
    bins = (episodes["end_step"] - 1) // width  # episode ending at step s lies in bin (s - 1) // width
    num_bins = -(-steps // width)
    sums = np.zeros((num_bins, num_envs))
    counts = np.zeros((num_bins, num_envs))
    np.add.at(sums, (bins, episodes["env"]), episodes["return"])
    np.add.at(counts, (bins, episodes["env"]), 1)
    with np.errstate(invalid="ignore"):
        per_env = sums / counts  # NaN where an env ended no episode in the bin
    keep = counts.any(axis=1)
    return np.minimum((np.arange(num_bins) + 1) * width, steps)[keep], np.nanmean(per_env[keep], axis=1)  # bin ends


def plot(results: list[dict], path: str) -> None:
    """Figure 3 of the report: episode returns over env steps for all envs, with a binned mean line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), sharey=True, squeeze=False)
    for ax, result in zip(axes[0], results):
        episodes, steps, n = result["episodes"], result["steps"], result["num_envs"]
        width = max(50, steps // 35)
        ax.scatter(episodes["end_step"], episodes["return"], s=2, alpha=0.15, color="tab:blue", label="episodes")
        ax.plot(*binned_curve(episodes, n, steps, width), color="tab:red", lw=2, label="mean over envs")
        ax.plot(*binned_curve(result["random"], n, steps, width), color="gray", lw=1, ls="--", label="random")
        ax.set_title(result["title"], fontsize=9)
        ax.set_xlabel("env steps")
        ax.set_ylim(-0.1, 2.1)
    axes[0][0].set_ylabel("episode return")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    K.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
def plan(args: Args, device: torch.device) -> list[dict]:
    """Every input read and every output checked before any rollout: checkpoints, tasks, source
    histories, and evaluation files that never overwrite another checkpoint's."""
    jobs, outputs = [], {}
    for path in args.checkpoints:
        checkpoint = load_checkpoint(path, map_location=device)
        data, name = checkpoint["data"], os.path.splitext(os.path.basename(path))[0]
        folder = os.path.dirname(os.path.abspath(path))
        # ad_train.py writes <data dir>/checkpoints/: its data dir holds the dataset and gets the eval files
        data_dir = os.path.dirname(folder) if os.path.basename(folder) == "checkpoints" else None
        out_dir = args.out_dir or os.path.join(data_dir or folder, "eval")
        out = os.path.join(
            out_dir,
            f"{name}__{args.split}{args.num_envs}_steps{args.steps}_seed{args.seed}"
            f"{'_greedy' if args.greedy else ''}.npz",
        )
        if out in outputs:
            raise ValueError(
                f"{outputs[out]} and {path} would both write {out}: evaluate them in runs with different --out-dir"
            )
        outputs[out] = path
        if os.path.exists(out):
            try:
                with np.load(out, allow_pickle=False) as existing:
                    written = json.loads(str(existing["meta"]))
            except Exception as e:  # truncated, not a zip, no meta: all say the same to the user
                raise ValueError(
                    f"{out} exists but is not a readable evaluation file ({type(e).__name__}); "
                    "move it away or pass another --out-dir"
                ) from None
            # the same training run (its name holds its start time) may be evaluated again, wherever it moved
            same = (
                written.get("run_name") == checkpoint["run_name"]
                if "run_name" in written
                else os.path.realpath(written.get("checkpoint", "")) == os.path.realpath(path)
            )
            if not same:
                written_by = written.get("checkpoint")
                raise ValueError(
                    f"{out} holds the evaluation of {written_by or 'another file'}, not of {path}; "
                    "move it away or pass another --out-dir"
                )
        source_folder = os.path.join(data_dir, data["dataset"]) if data_dir else ""  # none: no source row
        source = source_histories(source_folder, args.source_runs, data["size"])
        jobs.append(
            {
                "path": path,
                "name": name,
                "checkpoint": checkpoint,
                "out": out,
                "source": source,
                "tasks": K.eval_tasks(data["size"], args.split, args.num_envs, args.seed),
            }
        )
    for out_dir in sorted({os.path.dirname(job["out"]) for job in jobs}):  # last: a refused run creates nothing
        K.check_writable(out_dir)
        K.remove_stale_parts(out_dir)
    K.check_writable("runs")  # TensorBoard's eval/return curves
    return jobs


def main(args: Args) -> list[dict]:
    if args.num_envs < 1 or args.steps < 1 or args.curve_bin < 1:
        raise ValueError(
            f"--num-envs, --steps and --curve-bin must be >= 1, got {args.num_envs}, {args.steps}, {args.curve_bin}"
        )
    if not args.checkpoints:
        raise ValueError("--checkpoints needs at least one .pt file")
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    if args.plot:
        try:
            import matplotlib  # noqa: F401  (fail before any work, not after the rollouts)
        except ImportError:
            raise ValueError("--plot needs matplotlib: pip install -r requirements.txt") from None
    jobs = plan(args, device)
    results, random_cache = [], {}
    for job in jobs:
        checkpoint, tasks, size = job["checkpoint"], job["tasks"], job["checkpoint"]["data"]["size"]
        model = model_from_checkpoint(checkpoint).to(device)
        started = time.time()
        episodes = rollout(
            model,
            tasks,
            args.steps,
            size,
            args.seed,
            device,
            greedy=args.greedy,
            full_recompute=args.full_recompute,
            progress=args.progress,
            desc=job["name"],
        )["episodes"]
        seconds = time.time() - started
        key = (size, tasks.tobytes())
        if key not in random_cache:
            random_cache[key] = random_rollout(tasks, args.steps, size, args.seed)
        meta = {
            "algorithm": "ad",
            "checkpoint": job["path"],
            "run_name": checkpoint["run_name"],
            "exp_name": checkpoint["args"]["exp_name"],
            "dataset": checkpoint["data"]["dataset"],
            "model_config": checkpoint["model_config"],
            "data": checkpoint["data"],
            "iteration": checkpoint["iteration"],
            "split": args.split,
            "num_envs": args.num_envs,
            "steps": args.steps,
            "seed": args.seed,
            "greedy": args.greedy,
            "size": size,
            "obs": "light" if checkpoint["data"]["obs_dim"] == K.LIGHT_OBS_DIM else "dark",
            "context": model.config.context,
            "arrival": model.config.arrival,
            "full_recompute": args.full_recompute,
            "seconds": seconds,
            "device": str(device),
        }
        payload = {
            "tasks": tasks,
            **{f"episode_{k}": v for k, v in episodes.items()},
            **{f"random_episode_{k}": v for k, v in random_cache[key].items()},
            "meta": np.array(json.dumps(meta)),
        }
        K.atomic_write(job["out"], lambda f: np.savez_compressed(f, **payload))

        writer = SummaryWriter(os.path.join("runs", f"{checkpoint['run_name']}__eval_{args.split}__{args.seed}"))
        for step, value in zip(*binned_curve(episodes, args.num_envs, args.steps, args.curve_bin)):
            writer.add_scalar("eval/return", value, int(step))
        writer.close()

        table = [
            summary_row(f"{job['name']} (ctx {model.config.context})", episodes, args.num_envs),
            summary_row("random policy", random_cache[key], args.num_envs),
        ]
        if job["source"]:
            source = source_episodes(job["source"], args.steps)
            table.append(
                summary_row(f"source agents ({checkpoint['data']['dataset']}, own tasks)", source, len(job["source"]))
            )
        print(
            f"\n{job['path']}: {args.num_envs} {args.split} tasks x {args.steps:,} steps in {seconds:.0f} s -> {job['out']}"
        )
        print(format_table(table))
        results.append(
            {
                "episodes": episodes,
                "random": random_cache[key],
                "steps": args.steps,
                "num_envs": args.num_envs,
                "row": {**table[0], "out": job["out"]},
                "out": job["out"],
                "title": f"{job['name']}\nctx {model.config.context}: first 500 {table[0]['first500']:.2f}, "
                f"last 5 {table[0]['last5']:.2f}",
            }
        )
    if args.plot:
        # one figure per set of checkpoints: their files' names, or a digest of them when there are several
        digest = hashlib.sha256("\n".join(result["out"] for result in results).encode()).hexdigest()[:10]
        more = f"__and_{len(results) - 1}_more_{digest}" if len(results) > 1 else ""
        png = os.path.splitext(results[0]["out"])[0] + more + ".png"
        plot(results, png)
        print(f"figure: {png}")
    return [result["row"] for result in results]


if __name__ == "__main__":
    K.run_cli(main, Args)
