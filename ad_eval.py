"""In-context evaluation of AD checkpoints on held-out Key-To-Door tasks (the report's protocol).

    python ad_eval.py --checkpoints data/checkpoints/ad__nx1-light__dark__ctx250__1.pt   # 100 test tasks
    python ad_eval.py --checkpoints a.pt b.pt --split validation --num-envs 20 --plot    # choosing settings
    python ad_eval.py --checkpoints data/checkpoints/ad__nx1-light__dark__ctx250__1.pt --capture-video  # a GIF

For each checkpoint, `--num-envs` held-out tasks run together in one batch for `--steps` env steps,
with the same task after every reset. The model sees its own history (o_t, a_{t-1}, r_{t-1},
d_{t-1}, and p_{t-1} if it was trained with `--arrival-token`), trimmed at its context, and samples
its next action (`ad_train.rollout`). No gradient step is taken: any improvement is in-context
learning.

The protocol: the held-out tasks are split once into a fixed validation set of 20 tasks, on which
settings are chosen, and a test set (the rest), on which results are reported. Every metric is
computed per env first. A result is a matrix of training seeds x tasks; its mean and its
interquartile mean (IQM) each get a 95% interval from a bootstrap that resamples training seeds and
tasks together (`bootstrap`; here one checkpoint is one seed, so it resamples tasks, and
`python -m docs.make_figures seeds` applies the same function to several seeds). Rises compare
windows of equal width: the last 500 steps against the first 500. Each evaluation file holds the
model's episodes and a uniform-random policy's on the same tasks.

`--capture-video` draws what in-context learning looks like: for one task (`--video-env`), an animated GIF of the
model's first episodes beside its last ones, the agent's path on the grid and the key and the door shown once it
finds them, taken from the tokens of the same rollout (`<evaluation file>__video_env<i>.gif`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from importlib.util import find_spec
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
    """tasks evaluated together, one env each (all of the split's where it holds fewer: validation 20; test 35 at
    5x5, 206 at 7x7, 612 at 9x9)"""
    steps: int = 17_500
    """environment steps per env"""
    seed: int = 1
    """seed of the test-task choice and of action sampling: the same seed gives the same returns"""
    greedy: bool = False
    """take the argmax action instead of sampling"""
    temperature: float = 1.0
    """sample from softmax(logits / temperature): 1 is the model's distribution, below 1 sharper (toward --greedy)"""
    full_recompute: bool = False
    """recompute every window from scratch (the reference path) instead of the KV cache"""
    window_keep: int = 0
    """tokens a full window keeps when the next step restarts it (0: half the context; the context: a window that
    slides a step at a time, recomputed every step, about context/2 times slower)"""
    out_dir: str | None = None
    """where the evaluation files (and the PNG) go; None: <data dir>/eval for <data dir>/checkpoints/*.pt, else
    eval/ beside the checkpoint"""
    source_runs: int = 20
    """source learning histories read for the baseline row (0: none)"""
    curve_bin: int = 250
    """env steps per point of TensorBoard's eval/return curve"""
    plot: bool = False
    """write a PNG of episode returns over env steps"""
    capture_video: bool = False
    """write an animated GIF of one task's first episodes beside its last, next to the evaluation file"""
    video_env: int = 0
    """the env (0 .. --num-envs - 1) whose episodes --capture-video draws"""
    cuda: bool = True
    """use CUDA when available"""
    progress: bool = True
    """show a progress bar"""


# ----------------------------------------------------------------------------------------------
# Baselines: the uniform-random policy on the same tasks, and the source agents on their own
# ----------------------------------------------------------------------------------------------
def source_histories(folder: str, runs: int, size: int) -> list[dict]:
    """The first `runs` source learning histories, read (and checked: the checkpoint's grid) before any rollout."""
    if runs <= 0:
        return []
    if not os.path.isdir(folder):  # the table says why it has no source row
        reason = f"{folder} does not exist" if folder else "the checkpoint is not in a <data dir>/checkpoints/ folder"
        print(f"no source row: {reason}")
        return []
    histories = []
    for path in K.history_paths(folder)[:runs]:
        history, history_config = K.load_history(path)
        if history_config["size"] != size:  # `K.load_history` refuses a config without one
            raise ValueError(
                f"{path} is a {history_config['size']}x{history_config['size']} run, the checkpoint "
                f"was trained on {size}x{size}; pass --source-runs 0 or fix the dataset folder"
            )
        histories.append(history)
    return histories


def source_episodes(histories: list[dict], steps: int) -> dict:
    """The source agents' own learning curves over their first `steps` steps, one env per history."""
    lengths = np.array([min(steps, len(history["rewards"])) for history in histories])
    rewards = np.zeros((len(histories), lengths.max()), np.float32)  # (runs, longest)
    dones = np.zeros((len(histories), lengths.max()), bool)  # (runs, longest)
    for i, (history, length) in enumerate(zip(histories, lengths, strict=True)):
        rewards[i, :length] = history["rewards"][:length]
        dones[i, :length] = (history["terminations"] | history["truncations"])[:length]
    return K.stream_episodes(rewards, dones, lengths)


# ----------------------------------------------------------------------------------------------
# Metrics: per env first, over windows of equal width
# ----------------------------------------------------------------------------------------------
WINDOW = 500  # env steps of the first and the last window: a rise compares windows of one width


def late_returns(episodes: dict, num_envs: int, steps: int, last: int) -> np.ndarray:
    """(num_envs,) each env's mean, over the `WINDOW`-step windows that tile its last `last` steps (a multiple of
    `WINDOW`), of its mean return in each. Pooling the episodes of a long window would weigh short (successful)
    episodes more than the first `WINDOW` steps do, and bias the rise upward; windows wholly before step 0 are left
    out, as are an env's windows with no episode."""
    windows = [
        K.window_returns(episodes, num_envs, stop - WINDOW, stop)
        for stop in range(steps - last + WINDOW, steps + 1, WINDOW)
        if stop > 0
    ]
    if not windows:
        return np.full(num_envs, np.nan)
    return finite_mean(np.stack(windows, axis=1))  # (num_envs, windows) -> (num_envs,)


def per_env_metrics(episodes: dict, num_envs: int, steps: int) -> dict[str, np.ndarray]:
    """Per env: the mean return of the episodes that ended in the first `WINDOW` steps and in the last (NaN when the
    evaluation is shorter than two windows: they would overlap), the mean of its last 5 episodes, and the env step at
    which it first averages 1.8 over 10 episodes (inf: never)."""
    last5 = np.full(num_envs, np.nan)
    solved = np.full(num_envs, np.inf)
    for i in range(num_envs):
        mask = episodes["env"] == i
        returns = episodes["return"][mask]
        if len(returns):
            last5[i] = returns[-5:].mean()
            reached = K.first_reaching(returns, episodes["end_step"][mask])
            if reached is not None:
                solved[i] = reached
    if steps >= 2 * WINDOW:
        last500 = K.window_returns(episodes, num_envs, steps - WINDOW, steps)
    else:
        last500 = np.full(num_envs, np.nan)
    return {
        "first500": K.window_returns(episodes, num_envs, 0, WINDOW),
        "last500": last500,
        "last5": last5,
        "steps_to_1.8": solved,
    }


# ----------------------------------------------------------------------------------------------
# Intervals: the mean and the IQM over training seeds x tasks, from a bootstrap of both
# ----------------------------------------------------------------------------------------------
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # a fixed generator: the same scores give the same interval


def finite_mean(values: np.ndarray) -> np.ndarray:
    """The mean over the last axis, NaN left out (NaN where all are)."""
    finite = np.isfinite(values)
    count = finite.sum(-1)
    total = np.where(finite, values, 0.0).sum(-1)
    return np.divide(total, count, out=np.full(np.shape(total), np.nan), where=count > 0)


def interquartile_mean(values: np.ndarray) -> np.ndarray:
    """The IQM over the last axis as rliable reports it (scipy.stats.trim_mean(values, 0.25)): the values sorted,
    int(n / 4) cut from each end, the rest averaged; NaN left out (n counts the finite values)."""
    ordered = np.sort(values, axis=-1)  # NaN sort last
    count = np.isfinite(values).sum(-1)
    cut = count // 4
    zeros = np.zeros(values.shape[:-1] + (1,))
    cumulative = np.concatenate([zeros, np.cumsum(np.where(np.isfinite(ordered), ordered, 0.0), axis=-1)], axis=-1)
    upper = np.take_along_axis(cumulative, (count - cut)[..., None], axis=-1)[..., 0]
    lower = np.take_along_axis(cumulative, cut[..., None], axis=-1)[..., 0]
    kept = count - 2 * cut
    return np.divide(upper - lower, kept, out=np.full(np.shape(kept), np.nan), where=kept > 0)


STATISTICS = {"mean": finite_mean, "iqm": interquartile_mean}


def bootstrap(
    scores: np.ndarray,
    baseline: np.ndarray | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, tuple[float, float, float]]:
    """The mean and the IQM of `scores`, a (training seeds, tasks) matrix, over all its cells, each as (value, low,
    high) with a 95% percentile interval from a two-way bootstrap: every resample draws the tasks with replacement
    and the seeds with replacement, applies both to the matrix and computes the statistic. A second training run is
    a second draw of the network, so the spread between seeds belongs in the interval; with one seed the bootstrap
    resamples tasks alone; with 3 seeds these intervals are too narrow (their coverage: docs/reproduction.md).

    With `baseline` (the same tasks), each statistic is the difference stat(scores) - stat(baseline), both computed
    on the same resampled tasks and, when both have as many seeds, the same resampled seed indices (seed i paired
    with seed i); a one-seed baseline (the random policy) is paired with every seed, and other seed counts are
    resampled apart."""
    scores = np.asarray(scores, dtype=np.float64)
    if baseline is not None:
        baseline = np.asarray(baseline, dtype=np.float64)
        if baseline.ndim != 2 or baseline.shape[1] != scores.shape[1] or baseline.shape[0] == 0:
            raise ValueError(f"a paired baseline needs the same tasks: shapes {scores.shape} and {baseline.shape}")
    (num_seeds, num_tasks) = scores.shape
    rng = np.random.default_rng(seed)
    tasks = rng.integers(0, num_tasks, (resamples, num_tasks))  # drawn first: with one seed, a bootstrap over tasks
    seeds = rng.integers(0, num_seeds, (resamples, num_seeds))
    drawn = scores[seeds[:, :, None], tasks[:, None, :]].reshape(resamples, -1)  # (resamples, seeds * tasks)
    if baseline is not None:
        if baseline.shape[0] == num_seeds:
            baseline_seeds = seeds
        else:
            baseline_seeds = rng.integers(0, baseline.shape[0], (resamples, baseline.shape[0]))
        drawn_baseline = baseline[baseline_seeds[:, :, None], tasks[:, None, :]].reshape(resamples, -1)
    result = {}
    for name, statistic in STATISTICS.items():
        value = statistic(scores.reshape(-1))
        resampled = statistic(drawn)  # (resamples,)
        if baseline is not None:
            value = value - statistic(baseline.reshape(-1))
            resampled = resampled - statistic(drawn_baseline)
        resampled = resampled[np.isfinite(resampled)]
        if len(resampled):
            (low, high) = np.percentile(resampled, [2.5, 97.5])
        else:
            (low, high) = (np.nan, np.nan)
        result[name] = (float(value), float(low), float(high))
    return result


def excludes_zero(value: tuple[float, float, float]) -> bool:
    """True when a (value, low, high) interval lies wholly above or wholly below 0."""
    return bool(value[1] > 0 or value[2] < 0)


def format_interval(value: tuple[float, float, float], sign: str = "") -> str:
    """'0.46 [0.43, 0.51]', or with sign '+': '+0.60 [+0.47, +0.76]'; 'n/a' where the value is NaN."""
    if not np.isfinite(value[0]):
        return "n/a"
    return f"{value[0]:{sign}.2f} [{value[1]:{sign}.2f}, {value[2]:{sign}.2f}]"


# ----------------------------------------------------------------------------------------------
# The evaluation: each checkpoint in context on the held-out tasks, then its table and its files
# ----------------------------------------------------------------------------------------------
def main(args: Args) -> list[dict]:
    check_args(args)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    jobs = plan(args)

    results = []
    for job in jobs:
        checkpoint = job["checkpoint"]
        tasks = job["tasks"]
        size = checkpoint["data"]["size"]
        model = job["model"].to(device)
        started = time.time()
        try:
            rolled = rollout(
                model,
                tasks,
                args.steps,
                size,
                args.seed,
                device,
                greedy=args.greedy,
                temperature=args.temperature,
                full_recompute=args.full_recompute,
                window_keep=args.window_keep,
                progress=args.progress,
                desc=job["name"],
            )
        except RuntimeError as error:  # PyTorch's out-of-memory errors are RuntimeErrors
            if not out_of_memory(error):
                raise
            raise ValueError(
                f"{job['path']}: out of memory on {device} for --steps {args.steps:,} x --num-envs {args.num_envs:,}; "
                "lower --steps or --num-envs"
            ) from None
        seconds = time.time() - started
        episodes = rolled["episodes"]
        # the video's env: where each of its steps led, (steps - 1, 2), taken before the tokens are let go
        cells = arrival_cells(rolled["tokens"]["prev_arrivals"][args.video_env], size)
        del rolled  # the next checkpoint's rollout must not find this one's tokens still held
        random_episodes = K.random_episodes(tasks, size, args.steps, args.seed)  # seeded: the same for every checkpoint
        K.save_evaluation(job["out"], tasks, episodes, random_episodes, eval_meta(args, job, model, seconds, device))
        log_curve(args, checkpoint["run_name"], episodes)

        table = [
            summary_row(f"{job['name']} (ctx {model.config.context})", episodes, args.num_envs, args.steps),
            summary_row("random policy", random_episodes, args.num_envs, args.steps),
            difference_row("this policy - random (same tasks)", episodes, random_episodes, args.num_envs, args.steps),
        ]
        source_curve = None  # the source agents' episodes, for the figure: "num_envs" is their number of runs
        if job["source"]:
            source = source_episodes(job["source"], args.steps)
            name = f"source agents ({checkpoint['data']['dataset']}, own tasks)"
            table.append(summary_row(name, source, len(job["source"]), args.steps))
            source_curve = {**source, "num_envs": len(job["source"])}
        print(
            f"\n{job['path']}: {args.num_envs} {args.split} tasks x {args.steps:,} steps in {seconds:.0f} s "
            f"-> {job['out']}\nper env, then over envs: mean and IQM with 95% intervals "
            f"({BOOTSTRAP_RESAMPLES:,} bootstrap resamples of the tasks)"
        )
        print(format_table(table))
        if args.capture_video:
            title = f"{job['name']}, {args.split} env {args.video_env}"
            frames, durations = video_frames(title, size, tasks[args.video_env], cells, episodes, args.video_env)
            gif = video_path(job["out"], args.video_env)
            write_video(gif, frames, durations)
            print(f"video: {gif}")
        results.append(
            {
                "episodes": episodes,
                "random": random_episodes,
                "steps": args.steps,
                "num_envs": args.num_envs,
                "source": source_curve,
                "row": {**table[0], "out": job["out"]},
                "out": job["out"],
                "title": f"{job['name']}\nctx {model.config.context}: first 500 {table[0]['first500']:.2f}, "
                f"last 500 {table[0]['last500']:.2f}",
            }
        )

    if args.plot:
        png = figure_path([result["out"] for result in results])
        plot(results, png)
        print(f"figure: {png}")
    return [result["row"] for result in results]


# ----------------------------------------------------------------------------------------------
# The printed table: one checkpoint is one training seed, so its intervals resample tasks
# ----------------------------------------------------------------------------------------------
TABLE_COLUMNS = {"first500": "first 500 steps", "last500": "last 500 steps", "rise": "rise (last - first 500)"}


def interval_columns(stats: dict[str, dict]) -> dict[str, float]:
    """A table row's columns from `bootstrap` results per metric: <metric>, <metric>_low, <metric>_high for the mean,
    and the same with _iqm for the IQM."""
    columns = {}
    for metric, values in stats.items():
        for statistic, suffix in (("mean", ""), ("iqm", "_iqm")):
            for part, number in zip(("", "_low", "_high"), values[statistic], strict=True):
                columns[f"{metric}{suffix}{part}"] = number
    return columns


def summary_row(name: str, episodes: dict, num_envs: int, steps: int) -> dict:
    """Per metric, the mean and the IQM over envs with their 95% bootstrap intervals (`bootstrap` on one seed)."""
    metrics = per_env_metrics(episodes, num_envs, steps)
    reached = np.isfinite(metrics["steps_to_1.8"])
    stats = {
        "first500": bootstrap(metrics["first500"][None]),
        "last500": bootstrap(metrics["last500"][None]),
        "rise": bootstrap(metrics["last500"][None], metrics["first500"][None]),  # the same tasks in both windows
        "last5": bootstrap(metrics["last5"][None]),
    }
    return {
        "name": name,
        **interval_columns(stats),
        "reached": int(reached.sum()),
        "envs": num_envs,
        "median_steps_to_1.8": float(np.median(metrics["steps_to_1.8"])) if reached.any() else float("inf"),
    }


def difference_row(name: str, episodes: dict, baseline: dict, num_envs: int, steps: int) -> dict:
    """Per metric, the policy minus `baseline` on the same tasks (paired: both on the same resampled tasks), as the
    mean and the IQM with their 95% intervals: "above the random policy" is read here, not from two overlapping
    intervals. The rise compares each env's own rise (last 500 - first 500): its mean is the difference of the two
    rows' rises, its IQM the IQM of the policy's per-env rises minus the baseline's."""
    metrics = per_env_metrics(episodes, num_envs, steps)
    base = per_env_metrics(baseline, num_envs, steps)
    rise = metrics["last500"] - metrics["first500"]  # (num_envs,) each env's own rise
    base_rise = base["last500"] - base["first500"]
    stats = {
        "first500": bootstrap(metrics["first500"][None], base["first500"][None]),
        "last500": bootstrap(metrics["last500"][None], base["last500"][None]),
        "rise": bootstrap(rise[None], base_rise[None]),
    }
    return {"name": name, "difference": True, **interval_columns(stats)}


def format_table(rows: list[dict]) -> str:
    """Two lines per policy: the mean over envs and the IQM, each with its 95% interval."""
    titles = [*(f"{title:>24}" for title in TABLE_COLUMNS.values()), f"{'steps to MA(10) 1.8':>28}"]
    header = f"{'policy':<44} {'':<5} " + " ".join(titles)
    lines = [header, "-" * len(header)]
    for row in rows:
        if row.get("difference"):  # no steps of its own
            steps = ""
        elif np.isfinite(row["median_steps_to_1.8"]):
            steps = f"{row['median_steps_to_1.8']:,.0f} (median; {row['reached']}/{row['envs']} envs)"
        else:
            steps = f"never (median; {row['reached']}/{row['envs']} envs)"
        for statistic, suffix in (("mean", ""), ("IQM", "_iqm")):
            cells = []
            for metric in TABLE_COLUMNS:
                value = (row[f"{metric}{suffix}"], row[f"{metric}{suffix}_low"], row[f"{metric}{suffix}_high"])
                signed = metric == "rise" or row.get("difference")  # changes carry their sign
                cells.append(format_interval(value, "+" if signed else ""))
            name = row["name"][:44] if statistic == "mean" else ""
            line = f"{name:<44} {statistic:<5}" + "".join(f" {cell:>24}" for cell in cells)
            lines.append(line + (f" {steps:>28}" if statistic == "mean" and steps else ""))
    return "\n".join(lines)


def binned_curve(episodes: dict, num_envs: int, steps: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per bin of `width` env steps: mean over envs of each env's mean episode return in the bin."""
    (bin_ends, per_env) = binned_returns(episodes, num_envs, steps, width)
    return bin_ends, np.nanmean(per_env, axis=1)


def binned_returns(
    episodes: dict, num_envs: int, steps: int, width: int, keep_empty: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(bin ends, per-env returns (bins, num_envs)): each env's mean episode return in each bin of `width` env steps
    (NaN where the env ended no episode in the bin); bins where no env ended an episode are left out unless
    `keep_empty` (every bin kept, so that several evaluations' bins line up)."""
    bins = (episodes["end_step"] - 1) // width  # episode ending at step s lies in bin (s - 1) // width
    num_bins = -(-steps // width)
    sums = np.zeros((num_bins, num_envs))
    counts = np.zeros((num_bins, num_envs))
    np.add.at(sums, (bins, episodes["env"]), episodes["return"])
    np.add.at(counts, (bins, episodes["env"]), 1)
    with np.errstate(invalid="ignore"):
        per_env = sums / counts  # NaN where an env ended no episode in the bin
    keep = np.ones(num_bins, dtype=bool) if keep_empty else counts.any(axis=1)
    bin_ends = np.minimum((np.arange(num_bins) + 1) * width, steps)
    return bin_ends[keep], per_env[keep]


def plot(results: list[dict], path: str) -> None:
    """Draw `figure(results)` into the PNG `path`."""
    fig = figure(results)
    K.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))


def figure(results: list[dict]):
    """The report's Figure 3, one panel per checkpoint: the mean return over envs in bins of env steps, with its 95%
    interval over tasks (the table's bootstrap), beside the uniform-random policy on the same tasks and the source
    agents learning their own tasks (when their dataset is at hand), on one axis; the legend under the panels."""
    from matplotlib.figure import Figure  # not pyplot: no GUI backend, no global figure to close

    fig = Figure(figsize=(5 * len(results), 4.0))
    axes = fig.subplots(1, len(results), sharey=True, squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        steps = result["steps"]
        width = max(50, steps // 35)
        (bin_ends, per_env) = binned_returns(result["episodes"], result["num_envs"], steps, width)
        bands = [bootstrap(row[None])["mean"] for row in per_env]  # (value, low, high) per bin
        ax.fill_between(bin_ends, [b[1] for b in bands], [b[2] for b in bands], color="tab:red", alpha=0.2, lw=0)
        ax.plot(bin_ends, [b[0] for b in bands], color="tab:red", lw=2, label="AD in context, 95% interval")
        if result.get("source") is not None:
            source = result["source"]
            curve = binned_curve(source, source["num_envs"], int(source["end_step"].max()), width)  # its own steps
            ax.plot(*curve, color="tab:green", lw=1.5, label="source agents (own tasks)")
        random_curve = binned_curve(result["random"], result["num_envs"], steps, width)
        ax.plot(*random_curve, color="gray", lw=1.5, ls="--", label="random policy")
        ax.set_title(result["title"], fontsize=9)
        ax.set_xlabel("env steps on the task (no gradient step)")
        ax.set_ylim(-0.05, 2.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("episode return (mean over tasks)")
    legend = {}  # each label once, in the order drawn: a source curve may be in another panel only
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    columns = 3 if len(results) > 1 else 2  # one panel is too narrow for three labels side by side
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=columns, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.11, 1, 1))  # room for the legend under the panels, off the data
    return fig


# ----------------------------------------------------------------------------------------------
# The video: one task's first episodes beside its last, drawn from the rollout's own tokens
# ----------------------------------------------------------------------------------------------
VIDEO_EPISODES = 3  # episodes per panel; an episode is at most 50 steps, so a panel is at most 3 x 51 frames
VIDEO_FPS = 8
VIDEO_END_MS = 600  # a frame where an episode ends stays this long: its return can be read before the reset
VIDEO_HOLD_MS = 2000  # the last frame stays this long before the GIF starts again
VIDEO_GRID_PIXELS = 216  # a panel's grid is about this wide whatever the grid size
VIDEO_MIN_STEPS = 2 * K.EPISODE_STEPS  # more steps than this hold two whole episodes and the step after them
RENDER_COLORS = {
    "floor": (240, 240, 240),
    "grid": (205, 205, 205),
    "wall": (70, 70, 70),
    "path": (190, 212, 242),
    "trail": (95, 140, 215),
    "key": (235, 175, 0),
    "door": (150, 85, 40),
    "agent": (25, 55, 185),
}
"""RGB colours of `draw_grid`: floor cells, the lines between cells, the wall around the room, cells on the agent's
path, the line of its moves, the key, the door, the agent."""


def draw_grid(
    size: int, task: np.ndarray, path: np.ndarray, has_key: bool = False, door_found: bool = False, scale: int = 24
) -> np.ndarray:
    """An RGB picture of the grid, uint8 (size * scale, size * scale, 3), y up as in the env's "ansi" render (the
    image's top row of cells is y = size - 1). `task`: (key_x, key_y, door_x, door_y). `path`: the cells the agent
    visited, oldest first, int (n, 2) of (x, y), the last its cell now; they are tinted, and each move between
    neighbouring cells is drawn as a line (a jump, such as the return to the start cell after an episode, is not).
    What a Dark agent has found, for it sees neither until it steps on it: the key once `has_key` (on its cell, and a
    key-coloured dot on the agent), the door once `door_found`. `scale`: pixels per cell."""
    image = np.full((size * scale, size * scale, 3), RENDER_COLORS["floor"], dtype=np.uint8)
    image[::scale, :] = RENDER_COLORS["grid"]  # the first pixel row and column of every cell
    image[:, ::scale] = RENDER_COLORS["grid"]

    # each distinct cell and move drawn once: a frame of a long rollout costs what a short one does
    for x, y in np.unique(path, axis=0):
        fill_cell(image, x, y, size, scale, 1, RENDER_COLORS["path"])
    steps = np.concatenate([path[:-1], path[1:]], axis=1)  # (n - 1, 4): x0, y0, x1, y1
    is_move = np.abs(steps[:, 2:] - steps[:, :2]).sum(axis=1) == 1  # staying draws nothing, a jump is no move
    width = max(1, scale // 8)
    offset = scale // 2 - width // 2  # from a cell's corner to the line through its centre
    for x0, y0, x1, y1 in np.unique(steps[is_move], axis=0):
        (top, left) = cell_corner(min(x0, x1), max(y0, y1), size, scale)  # the upper left of the two cells
        (bottom, right) = cell_corner(max(x0, x1), min(y0, y1), size, scale)
        image[top + offset : bottom + offset + width, left + offset : right + offset + width] = RENDER_COLORS["trail"]

    (key_x, key_y, door_x, door_y) = task
    if door_found:
        fill_cell(image, door_x, door_y, size, scale, 1, RENDER_COLORS["door"])
    if has_key:
        fill_cell(image, key_x, key_y, size, scale, max(2, scale // 4), RENDER_COLORS["key"])

    # the agent: a disk at the centre of its cell, with a smaller one in the key's colour while it holds the key
    (row, column) = cell_corner(*path[-1], size, scale)
    offsets = np.arange(scale) + 0.5 - scale / 2  # pixel centres relative to the cell's centre
    distances = offsets[:, None] ** 2 + offsets[None, :] ** 2  # squared, (scale, scale)
    agent_cell = image[row : row + scale, column : column + scale]
    agent_cell[distances <= (0.35 * scale) ** 2] = RENDER_COLORS["agent"]
    if has_key:
        agent_cell[distances <= (0.15 * scale) ** 2] = RENDER_COLORS["key"]
    border = max(1, scale // 12)  # the wall around the room
    image[:border] = RENDER_COLORS["wall"]
    image[-border:] = RENDER_COLORS["wall"]
    image[:, :border] = RENDER_COLORS["wall"]
    image[:, -border:] = RENDER_COLORS["wall"]
    return image


def cell_corner(x: int, y: int, size: int, scale: int) -> tuple[int, int]:
    """The top-left pixel (row, column) of cell (x, y): y grows upwards, image rows downwards."""
    return (size - 1 - int(y)) * scale, int(x) * scale


def fill_cell(image: np.ndarray, x: int, y: int, size: int, scale: int, inset: int, color: tuple) -> None:
    """Cell (x, y) filled but for `inset` pixels at its edges (1: all but the grid lines)."""
    (row, column) = cell_corner(x, y, size, scale)
    image[row + inset : row + scale - inset + 1, column + inset : column + scale - inset + 1] = color


def arrival_cells(prev_arrivals: torch.Tensor, size: int) -> np.ndarray:
    """(steps - 1, 2) int64: the cell (x, y) each step of one env led to (the door's at the door, before the reset),
    from its `prev_arrivals` tokens (steps, 2): token t + 1 holds step t's, so the rollout's last step has none."""
    scaled = prev_arrivals[1:].float().cpu().numpy()
    return np.rint(scaled * K.obs_scale(size, K.DARK_OBS_DIM)[:2]).astype(np.int64)


def episode_pictures(size: int, task: np.ndarray, cells: np.ndarray, scale: int) -> tuple[list[np.ndarray], list[int]]:
    """`draw_grid`'s pictures of one episode whose steps led to `cells` (n, 2): the start cell, then one after each
    step (n + 1 pictures), and the return after each. What a Dark agent has found, by the env's rules: the key from
    the step it enters the key cell (it then holds the key), the door from the step it enters it holding the key
    (which ends the episode); the door entered without the key does nothing and stays hidden."""
    path = np.concatenate([np.zeros((1, 2), np.int64), cells])  # (n + 1, 2): every episode starts in (0, 0)
    key = tuple(task[:2])
    door = tuple(task[2:])
    has_key = False
    door_found = False
    pictures = []
    returns = []
    for t in range(len(path)):
        entered = tuple(path[t])
        if t > 0 and has_key and entered == door:
            door_found = True
        if t > 0 and entered == key:
            has_key = True
        pictures.append(draw_grid(size, task, path[: t + 1], has_key, door_found, scale))
        returns.append(int(has_key) + int(door_found))  # +1 for the key, +1 for the door
    return pictures, returns


def env_episodes(episodes: dict, env: int, recorded: int) -> list[tuple[int, int]]:
    """(start, stop) steps of the env's episodes whose every step the tokens record (they end by step `recorded`):
    all its whole episodes but one that ends at the rollout's very last step."""
    ends = episodes["end_step"][episodes["env"] == env]
    starts = np.concatenate([[0], ends[:-1]])
    return [(int(start), int(stop)) for start, stop in zip(starts, ends, strict=True) if stop <= recorded]


def panel_frames(
    size: int, task: np.ndarray, cells: np.ndarray, spans: list[tuple[int, int]], first: int, scale: int, which: str
) -> tuple[str, list[tuple[np.ndarray, str, bool]]]:
    """One panel: its heading (the episodes' numbers and `which` they are), and its frames (a picture, a status line,
    whether an episode ends there) for the episodes of `spans`, numbered from `first`: per episode a start frame and
    one per step."""
    last = first + len(spans) - 1
    heading = f"episodes {first}-{last} ({which})" if last > first else f"episode {first} ({which})"
    frames = []
    for number, (start, stop) in enumerate(spans, start=first):
        pictures, returns = episode_pictures(size, task, cells[start:stop], scale)
        for step, (picture, reward_sum) in enumerate(zip(pictures, returns, strict=True)):
            frames.append((picture, f"episode {number}   step {step}   return {reward_sum}", step == stop - start))
    return heading, frames


def video_frames(
    title: str, size: int, task: np.ndarray, cells: np.ndarray, episodes: dict, env: int
) -> tuple[list, list[int]]:
    """The GIF's frames (PIL images) and their durations (ms): the env's first `VIDEO_EPISODES` whole episodes on
    the left and its last on the right, one env step a frame; the panel that ends first holds its last picture.
    Every frame differs from the one before (a status line moves on), so the GIF keeps each as a frame."""
    from PIL import Image, ImageDraw, ImageFont

    spans = env_episodes(episodes, env, len(cells))
    shown = min(VIDEO_EPISODES, len(spans) // 2)  # the two panels never share an episode
    last = len(spans) - shown
    scale = max(4, VIDEO_GRID_PIXELS // size)
    panels = [
        panel_frames(size, task, cells, spans[:shown], 1, scale, "the first"),
        panel_frames(size, task, cells, spans[last:], last + 1, scale, "the last"),
    ]
    font = ImageFont.load_default(size=13)
    line = 18  # pixels per line of text
    margin = 12
    grid = size * scale
    notes = [
        "the same task in every episode, the weights never change:",
        "the key (yellow) and the door (brown) are drawn once found",
    ]
    widest_text = max(font.getlength(text) for text in [title, *notes])
    width = max(2 * grid + 3 * margin, int(widest_text) + 2 * margin)
    heading_y = margin + line + 6  # the title, a gap, then each panel's heading and status line
    grid_y = heading_y + 2 * line
    notes_y = grid_y + grid + 6
    height = notes_y + len(notes) * line + margin
    # a fixed palette holding every colour exactly: each frame's pixels can be checked against RENDER_COLORS
    greys = [(level, level, level) for level in range(0, 256, 17)]  # black to white, for the text's edges
    palette_image = Image.new("P", (1, 1))
    palette_image.putpalette([channel for color in [*RENDER_COLORS.values(), *greys] for channel in color])
    frames = []
    durations = []
    count = max(len(frames_of) for _, frames_of in panels)
    for index in range(count):
        canvas = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(canvas)
        draw.text((margin, margin), title, fill="black", font=font)
        for column, (heading, frames_of) in enumerate(panels):
            (picture, status, _) = frames_of[min(index, len(frames_of) - 1)]
            left = margin + column * (grid + margin)
            draw.text((left, heading_y), heading, fill="black", font=font)
            draw.text((left, heading_y + line), status, fill="black", font=font)
            canvas.paste(Image.fromarray(picture), (left, grid_y))
        for row, note in enumerate(notes):
            draw.text((margin, notes_y + row * line), note, fill="black", font=font)
        frames.append(canvas.quantize(palette=palette_image, dither=Image.Dither.NONE))
        # an episode ends in a panel still playing (a panel holding its last picture pauses nothing)
        episode_ends = any(index < len(frames_of) and frames_of[index][2] for _, frames_of in panels)
        if index == count - 1:
            durations.append(VIDEO_HOLD_MS)
        elif episode_ends:
            durations.append(VIDEO_END_MS)
        else:
            durations.append(1000 // VIDEO_FPS)
    return frames, durations


def write_video(path: str, frames: list, durations: list[int]) -> None:
    """An animated GIF of `frames`, each shown its duration (ms), looping."""
    K.atomic_write(
        path,
        lambda f: frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0),
    )


# ----------------------------------------------------------------------------------------------
# Checks and outputs: flags, inputs and output files, all before any rollout
# ----------------------------------------------------------------------------------------------
def check_args(args: Args) -> None:
    """Every flag's range, and the packages --plot and --capture-video need, before any work."""
    K.check_flags(
        [
            (len(args.checkpoints) > 0, "--checkpoints needs at least one .pt file"),
            (args.num_envs >= 1, f"--num-envs must be >= 1, got {args.num_envs}"),
            (  # shorter, a task may end no episode and the table would average the others without a word
                args.steps >= K.EPISODE_STEPS,
                f"--steps must be >= {K.EPISODE_STEPS} (one episode, so that every task ends one), got {args.steps}",
            ),
            (args.source_runs >= 0, f"--source-runs must be >= 0, got {args.source_runs}"),
            (args.curve_bin >= 1, f"--curve-bin must be >= 1, got {args.curve_bin}"),
            (
                np.isfinite(args.temperature) and args.temperature > 0,
                f"--temperature must be a finite number > 0, got {args.temperature}",
            ),
            (
                not args.greedy or args.temperature == 1.0,
                "--temperature has no effect with --greedy (argmax at every temperature): pass one of them",
            ),
            (args.window_keep >= 0, f"--window-keep must be >= 0 (0: half the context), got {args.window_keep}"),
            (
                not args.capture_video or args.steps > VIDEO_MIN_STEPS,
                f"--capture-video needs --steps > {VIDEO_MIN_STEPS} (two whole episodes and the step after), "
                f"got {args.steps}",
            ),
            # the packages of the outputs asked for: fail before any work, not after the rollouts
            (
                not args.plot or find_spec("matplotlib") is not None,
                "--plot needs matplotlib: pip install -r requirements.txt",
            ),
            (
                not args.capture_video or find_spec("PIL") is not None,
                "--capture-video needs pillow: pip install -r requirements.txt",
            ),
        ]
    )


def out_of_memory(error: RuntimeError) -> bool:
    """Whether `error` is PyTorch's out-of-memory error: a GPU's torch.OutOfMemoryError, or the CPU allocator's."""
    return isinstance(error, torch.OutOfMemoryError) or "DefaultCPUAllocator: can't allocate memory" in str(error)


def plan(args: Args) -> list[dict]:
    """Every input read and every output checked before any rollout: every checkpoint (its model built), tasks,
    source histories, and evaluation files that never overwrite another's."""
    jobs = []
    outputs = {}
    checkpoints = [(path, load_checkpoint(path)) for path in args.checkpoints]  # all first: a bad second writes nothing
    held_out = min(len(K.task_split(checkpoint["data"]["size"], args.split)) for (_, checkpoint) in checkpoints)
    if args.num_envs > held_out:  # a small grid holds fewer held-out tasks than the default asks for: all of them
        print(f"--num-envs {args.num_envs}: the {args.split} split holds {held_out} tasks; evaluating all of them")
        args.num_envs = held_out
    if not 0 <= args.video_env < args.num_envs:  # checked against the tasks it will run
        raise ValueError(
            f"--video-env must be one of the --num-envs {args.num_envs} envs, 0..{args.num_envs - 1}, "
            f"got {args.video_env}"
        )
    for path, checkpoint in checkpoints:
        model = model_from_checkpoint(checkpoint)  # on the host: it moves to the device at its turn
        if args.window_keep > model.config.context:
            raise ValueError(
                f"--window-keep {args.window_keep} is more than the context {model.config.context} of {path}"
            )
        data = checkpoint["data"]
        name = os.path.splitext(os.path.basename(path))[0]
        (out_dir, data_dir) = default_out_dir(path)
        out = os.path.join(args.out_dir or out_dir, f"{name}__{run_suffix(args)}.npz")
        if out in outputs:
            raise ValueError(
                f"{outputs[out]} and {path} would both write {out}: evaluate them in runs with different --out-dir"
            )
        outputs[out] = path
        check_output(out, path, checkpoint)
        source_folder = os.path.join(data_dir, data["dataset"]) if data_dir else ""  # none: no source row
        jobs.append(
            {
                "path": path,
                "name": name,
                "checkpoint": checkpoint,
                "model": model,
                "out": out,
                "source": source_histories(source_folder, args.source_runs, data["size"]),
                "tasks": K.eval_tasks(data["size"], args.split, args.num_envs, args.seed),
            }
        )
    # last, so that a refused run creates nothing but folders: every file written, with the longest names
    written = ["runs/"] + [job["out"] for job in jobs]  # runs/: TensorBoard's eval/return curves
    written += [video_path(job["out"], args.video_env) for job in jobs] if args.capture_video else []
    written += [figure_path([job["out"] for job in jobs])] if args.plot else []
    for path in written:
        K.check_writable(path)
    return jobs


def video_path(out: str, env: int) -> str:
    """The GIF of env `env` beside the evaluation file `out`."""
    return os.path.splitext(out)[0] + f"__video_env{env}.gif"


def figure_path(outs: list[str]) -> str:
    """One figure per set of evaluation files: their names, or a digest of them when there are several."""
    digest = hashlib.sha256("\n".join(outs).encode()).hexdigest()[:10]
    more = f"__and_{len(outs) - 1}_more_{digest}" if len(outs) > 1 else ""
    return os.path.splitext(outs[0])[0] + more + ".png"


def run_suffix(args: Args) -> str:
    """What tells apart evaluations of one checkpoint, in the evaluation file's name and TensorBoard's run name."""
    greedy = "_greedy" if args.greedy else ""
    temperature = f"_temp{args.temperature:g}" if args.temperature != 1.0 else ""
    keep = f"_keep{args.window_keep}" if args.window_keep else ""
    return f"{args.split}{args.num_envs}_steps{args.steps}_seed{args.seed}{greedy}{temperature}{keep}"


def default_out_dir(path: str) -> tuple[str, str | None]:
    """(where the evaluation of checkpoint `path` goes, the data dir of its dataset or None). ad_train.py writes
    <data dir>/checkpoints/: its data dir holds the dataset and gets the eval files; elsewhere eval/ beside it."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.basename(folder) == "checkpoints":
        data_dir = os.path.dirname(folder)
        return os.path.join(data_dir, "eval"), data_dir
    return os.path.join(folder, "eval"), None


def check_output(out: str, path: str, checkpoint: dict) -> None:
    """An existing evaluation file may be rewritten only by the evaluation of the same training run (its run name
    holds its start time), wherever its checkpoint moved; a file we cannot read is never overwritten either."""
    if not os.path.isfile(out):  # none yet, or not a regular file: `K.check_writable` refuses the latter
        return
    try:
        with np.load(out, allow_pickle=False) as existing:
            written = json.loads(str(existing["meta"]))
    except Exception as e:  # truncated, not a zip, no meta: all say the same to the user
        raise ValueError(
            f"{out} exists but is not a readable evaluation file ({type(e).__name__}); "
            "move it away or pass another --out-dir"
        ) from None
    if written.get("run_name") != checkpoint["run_name"]:
        raise ValueError(
            f"{out} holds the evaluation of {written.get('checkpoint', 'another file')}, not of {path}; "
            "move it away or pass another --out-dir"
        )


# ----------------------------------------------------------------------------------------------
# Outputs: the evaluation file, TensorBoard's curve
# ----------------------------------------------------------------------------------------------
def eval_meta(args: Args, job: dict, model: torch.nn.Module, seconds: float, device: torch.device) -> dict:
    """The settings of one evaluation, stored in its file as JSON."""
    checkpoint = job["checkpoint"]
    return {
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
        "temperature": args.temperature,
        "size": checkpoint["data"]["size"],
        "obs": "light" if checkpoint["data"]["obs_dim"] == K.LIGHT_OBS_DIM else "dark",
        "context": model.config.context,
        "arrival": model.config.arrival,
        "full_recompute": args.full_recompute,
        "window_keep": args.window_keep,
        "seconds": seconds,
        "device": str(device),
    }


def log_curve(args: Args, run_name: str, episodes: dict) -> None:
    """TensorBoard's eval/return, one run per evaluation setting: other --num-envs or --steps never share a run."""
    writer = SummaryWriter(os.path.join("runs", f"{run_name}__eval_{run_suffix(args)}"))
    for step, value in zip(*binned_curve(episodes, args.num_envs, args.steps, args.curve_bin), strict=True):
        writer.add_scalar("eval/return", value, int(step))
    writer.close()


if __name__ == "__main__":
    K.run_cli(main, Args)
