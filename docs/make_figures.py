"""Figures of the README, drawn only from files the scripts wrote for them. Run from the repo root:

    python -m docs.make_figures sac --nx1 data/nx1-light --onexn-light data/1xn-light --onexn-dark data/1xn-dark
    python -m docs.make_figures ad --fig3 long.npz ctx10.npz --fig4 ctx*.npz --fig5 bc*.npz \
        --fig6-light light.npz --fig6-dark dark.npz --fig6-rl2 rl2.npz
    python -m docs.make_figures rl2 --curve data/eval/rl2__9x9__1__curve.csv --out docs/9x9/rl2_curve
    python -m docs.make_figures table --evals a.npz b.npz --window 250
    python -m docs.make_figures seeds --evals docs/laptop/test/*.npz --csv seeds.csv --source-csv source_runs.csv
    python -m docs.make_figures sources --data data7/nx1-light --runs 768 --csv docs/laptop/source_runs.csv

`sac` draws Figure 2 (source learning curves from sac_collect.py's histories: mean over runs and
the 10-90% band, in bins of `--bin` env steps). `ad` draws Figures 3 to 6 from evaluation files
(ad_eval.py's, and rl2_train.py's held-out trials in the same layout); Figures 3 and 4 group the
files of a model that differ only in training seed: the mean over seeds x tasks with its 95%
interval from ad_eval's bootstrap of seeds and tasks together (Figure 3 per bin, as a band beside
the source agents' band over runs; Figure 4 also the lowest to highest seed). `rl2` draws RL²'s
learning curve from the `<stem>__curve.csv` that rl2_train.py writes at every in-training
evaluation. Each PNG comes with a CSV of the numbers it shows. `table` draws nothing: it prints, per
evaluation file, the returns over the first 500 steps, the best bin and the last steps, and how
often the policy solves its task after a solved episode in the last `--window` steps and after none
(keeping a solution against finding one; rates per env, then averaged over envs), with the first
file's uniform-random policy as the last row. `seeds` prints, for each model (the files of one model
that differ only in training seed), the mean and the IQM over training seeds x tasks with 95%
intervals from the bootstrap that resamples seeds and tasks together (`ad_eval.bootstrap`), for the
first episode, the first 10 episodes, the first and the last 500 steps, the last `--final-steps` (both as the mean
of their 500-step windows and pooled over their episodes) and the rises between windows of equal width (per
seed-task pair, so the IQM of a rise is the IQM of per-task rises), and the median step at which a task's 10-episode
average first reaches 1.8, then paired differences between models on the same tasks and seeds (the rises too: the
difference of two models' rises is the paired test of "it emerges between contexts A and B"). With `--source-csv`,
each model's median step to MA(10) 1.8 minus its source runs', with a bootstrap interval. `sources` writes that CSV:
one row per source run (its task, the step it first reaches MA(10) 1.8, its first and last 500 steps).

An evaluation file holds `tasks` (N, 4), the episodes of the policy (`episode_env`,
`episode_return`, `episode_end_step`, flat), those of a uniform-random policy on the same tasks and
steps (`random_episode_*`) and `meta`, a JSON string of the settings. Returns are averaged per env
first, then across envs, as `ad_eval.py` prints them; "the last N steps" is the mean of the 500-step
windows that tile them (`ad_eval.late_returns`), so that it compares with the first 500 steps.
"""

import csv
import io
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tyro

import keydoor_env as K
from ad_eval import (  # the protocol's metrics and intervals
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    WINDOW,
    binned_curve,
    bootstrap,
    excludes_zero,
    finite_mean,
    format_interval,
    late_returns,
    per_env_metrics,
    source_episodes,
    source_histories,
)
from ad_eval import binned_returns as per_env_binned_returns  # this file's binned_returns reads SAC histories

EVAL_ARRAYS = (
    "tasks",
    "episode_env",
    "episode_return",
    "episode_end_step",
    "random_episode_env",
    "random_episode_return",
    "random_episode_end_step",
)
META_KEYS = ("algorithm", "checkpoint", "model_config", "split", "num_envs", "steps", "seed", "size", "obs")


# ----------------------------------------------------------------------------------------------
# Inputs: evaluation files, checked whole before anything is drawn
# ----------------------------------------------------------------------------------------------
def check_episodes(path: str, what: str, episodes: dict, num_envs: int, steps: int) -> None:
    lengths = {len(v) for v in episodes.values()}
    if len(lengths) != 1 or any(v.ndim != 1 for v in episodes.values()):
        raise ValueError(f"{path}: {what} episode arrays are not flat arrays of one length")
    if len(episodes["env"]) and not (0 <= episodes["env"].min() and episodes["env"].max() < num_envs):
        raise ValueError(f"{path}: {what} episodes name envs outside 0..{num_envs - 1}")
    if len(episodes["end_step"]) and not (1 <= episodes["end_step"].min() and episodes["end_step"].max() <= steps):
        raise ValueError(f"{path}: {what} episodes end outside steps 1..{steps}")
    if not np.isfinite(episodes["return"]).all():
        raise ValueError(f"{path}: {what} episode returns hold NaN or inf")


def load_eval(path: str) -> dict:
    """An evaluation file of ad_eval.py or rl2_train.py: episodes, random-policy episodes, tasks,
    meta and a label; anything missing or inconsistent is a ValueError naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such evaluation file; run ad_eval.py (or rl2_train.py) first")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [key for key in EVAL_ARRAYS + ("meta",) if key not in f.files]
            arrays = {key: f[key] for key in EVAL_ARRAYS if key in f.files}
            meta = json.loads(str(f["meta"])) if "meta" in f.files else {}
    except Exception as e:  # a truncated zip, a damaged member or bad JSON: all say the same to a reader
        raise ValueError(f"{path}: not a readable evaluation file ({type(e).__name__}: {e})") from None
    if missing:
        raise ValueError(
            f"{path}: not an evaluation file in the current layout (no {', '.join(missing)}); "
            f"rerun ad_eval.py or rl2_train.py"
        )
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: meta is not a JSON object")
    if missing_meta := [key for key in META_KEYS if key not in meta]:
        raise ValueError(f"{path}: meta lacks {missing_meta}")
    if meta["algorithm"] not in ("ad", "rl2") or (meta["algorithm"] == "ad" and "context" not in meta):
        raise ValueError(f"{path}: meta's algorithm must be 'ad' (with a context) or 'rl2', got {meta['algorithm']!r}")
    tasks = arrays["tasks"]
    num_envs = int(meta["num_envs"])
    steps = int(meta["steps"])
    if tasks.shape != (num_envs, 4):
        raise ValueError(f"{path}: tasks have shape {tasks.shape}, meta says {num_envs} envs")
    runs = {}
    for prefix in ("", "random_"):
        runs[prefix] = {key: arrays[f"{prefix}episode_{key}"] for key in ("env", "return", "end_step")}
        check_episodes(path, prefix.rstrip("_") or "the policy's", runs[prefix], num_envs, steps)
    name = os.path.splitext(os.path.basename(meta["checkpoint"]))[0]
    if meta["algorithm"] == "rl2":
        label = "RL², arrival token" if model_arrival(meta) else "RL²"
    elif "exp_name" in meta and "dataset" in meta:  # ad_train.py names runs <exp_name> on <dataset>
        label = f"{meta['exp_name']} on {meta['dataset']}, {meta['obs']} obs, ctx {meta['context']}"
    else:
        label = f"{name}, ctx {meta['context']}"
    label += evaluation_setting(meta)
    random = {
        "name": "random policy",
        "label": "random policy",
        "episodes": runs["random_"],
        "num_envs": num_envs,
        "steps": steps,
    }
    return {
        "episodes": runs[""],
        "random": random,
        "tasks": tasks,
        "num_envs": num_envs,
        "steps": steps,
        "meta": meta,
        "label": label,
        "name": name,
    }


def check_final_steps(final_steps: int) -> None:
    """--final-steps is tiled by the 500-step windows of `ad_eval.late_returns`."""
    if final_steps < WINDOW or final_steps % WINDOW:
        raise ValueError(f"--final-steps must be a positive multiple of {WINDOW}, got {final_steps}")


# ----------------------------------------------------------------------------------------------
# Metrics: per env first, then across envs (the windows and intervals of ad_eval.py)
# ----------------------------------------------------------------------------------------------
def early_returns(run: dict) -> np.ndarray:
    """Per env, the mean return of the episodes that ended in the first `WINDOW` env steps (NaN if none)."""
    return K.window_returns(run["episodes"], run["num_envs"], 0, WINDOW)


def final_returns(run: dict, last: int) -> np.ndarray:
    """Per env, the mean over the 500-step windows of the last `last` env steps of its mean return in each."""
    return late_returns(run["episodes"], run["num_envs"], run["steps"], last)


def model_arrival(meta: dict) -> bool:
    """Whether the evaluated model had the arrival token: ad_eval.py records it as meta["arrival"], rl2_train.py in
    meta["model_config"]["arrival"]."""
    if "arrival" in meta:
        return bool(meta["arrival"])
    return bool(meta.get("model_config", {}).get("arrival"))


def evaluation_setting(meta: dict) -> str:
    """How an evaluation differs from the default (actions sampled at temperature 1, a window that keeps half the
    context at a restart), as a label's suffix: the same checkpoint evaluated two ways is two rows, never one model's
    seeds."""
    setting = ""
    if meta.get("greedy"):
        setting += ", greedy"
    if meta.get("temperature", 1.0) != 1.0:
        setting += f", temperature {meta['temperature']:g}"
    if meta.get("window_keep"):
        setting += f", window keeps {meta['window_keep']}"
    return setting


def group_by_model(runs: list[dict]) -> list[tuple[str, list[dict]]]:
    """(label, runs) per model, in a fixed order: a model is all its settings but the training seed (evaluation
    settings included). Within a model the runs keep the order given (seed i of one model is paired with seed i of
    another)."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        meta = run["meta"]
        key = (
            meta["algorithm"],
            meta.get("exp_name", ""),
            meta.get("dataset", ""),
            meta["obs"],
            model_arrival(meta),
            meta.get("context", 0),
            evaluation_setting(meta),
        )
        groups.setdefault(key, []).append(run)
    return [(members[0]["label"], members) for _, members in sorted(groups.items())]


def first_episode_returns(run: dict) -> np.ndarray:
    """Per env, the return of its first episode (NaN if it has none): "succeeds at once" is read here."""
    episodes = run["episodes"]
    first = np.full(run["num_envs"], np.nan)
    for i in range(run["num_envs"]):
        mask = episodes["env"] == i
        if mask.any():
            first[i] = episodes["return"][mask][np.argmin(episodes["end_step"][mask])]
    return first


def solved_after(run: dict, window: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per env, (solved, episodes) of the episodes with a solved episode (return 2) that ended fewer than
    `window` env steps before their start ("recent success") and of the others ("no recent success")."""
    counts = {
        key: (np.zeros(run["num_envs"], np.int64), np.zeros(run["num_envs"], np.int64))
        for key in ("recent success", "no recent success")
    }
    episodes = run["episodes"]
    for i in range(run["num_envs"]):
        returns = episodes["return"][episodes["env"] == i]
        ends = episodes["end_step"][episodes["env"] == i]
        starts = np.concatenate([[0], ends[:-1]])  # an episode starts where the one before it ended
        for j in range(len(returns)):
            recent = ((returns[:j] == 2) & (ends[:j] > starts[j] - window)).any()
            (solved, total) = counts["recent success" if recent else "no recent success"]
            solved[i] += int(returns[j] == 2)
            total[i] += 1
    return counts


def per_env_rate(solved: np.ndarray, total: np.ndarray) -> tuple[float, int]:
    """The solve rate averaged over envs (each env weighs the same), and how many envs had such episodes."""
    has = total > 0
    rate = float((solved[has] / total[has]).mean()) if has.any() else float("nan")
    return rate, int(has.sum())


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------
def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def prepare_output(folder: str) -> None:
    K.check_writable(os.path.join(folder, ""))  # the folder (a path ending in "/")


def write_csv(path: str, rows: list[dict]) -> None:
    """`path` atomically, the rows' keys (the union in first-seen order) as its columns."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
    writer.writeheader()
    writer.writerows(rows)
    K.atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def save_figure(fig, out: str, rows: list[dict]) -> None:
    """`out`.png and `out`.csv (the rows' keys, the union in first-seen order, are its columns)."""
    plt = pyplot()
    fig.tight_layout()
    K.atomic_write(out + ".png", lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    write_csv(out + ".csv", rows)


def style(ax, xlabel: str, title: str, legend_size: int, ylabel: bool = True, **legend) -> None:
    """The axes every figure shares: returns from 0 to 2, a title and a legend."""
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel("episode return")
    ax.set_ylim(-0.05, 2.05)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=legend_size, **legend)


# ----------------------------------------------------------------------------------------------
# sac: Figure 2, from the source histories
# ----------------------------------------------------------------------------------------------
@dataclass
class Sac:
    nx1: str = "data/nx1-light"
    """Nx1 histories"""
    onexn_light: str = "data/1xn-light"
    """1xN Light histories"""
    onexn_dark: str = "data/1xn-dark"
    """1xN Dark histories"""
    bin: int = 1000
    """env steps per point"""
    out: str = "docs/laptop/fig2_sac"
    """output path without extension (.png and .csv are written)"""


def binned_returns(path: str, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(bin ends, mean return of the episodes ending in each bin) of one history."""
    history, _ = K.load_history(path)
    returns, ends = K.episode_returns(history["rewards"], history["terminations"] | history["truncations"])
    edges = np.arange(0, len(history["rewards"]) + width, width)
    which = np.digitize(ends, edges[1:], right=True)
    values = np.array([returns[which == b].mean() if (which == b).any() else np.nan for b in range(len(edges) - 1)])
    return edges[1:], values


def curves(folder: str, width: int) -> tuple[np.ndarray, np.ndarray] | None:
    if not os.path.isdir(folder):
        return None
    runs = [binned_returns(path, width) for path in K.history_paths(folder)]
    steps = runs[0][0]
    return steps, np.stack([r[1][: len(steps)] for r in runs])  # (runs, bins)


def sac(args: Sac) -> None:
    if args.bin < 1:
        raise ValueError(f"--bin must be >= 1, got {args.bin}")
    prepare_output(os.path.dirname(args.out) or ".")
    panels = [
        ("Nx1 (one fixed task per run)", args.nx1),
        ("1xN Light", args.onexn_light),
        ("1xN Dark", args.onexn_dark),
    ]
    results = [curves(folder, args.bin) for _, folder in panels]  # every history read before drawing
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4), sharey=True)
    rows = []
    for ax, (title, _), result in zip(axes, panels, results, strict=True):
        if result is None:
            ax.set_title(f"{title}: no data")
            continue
        steps, values = result
        mean = np.nanmean(values, axis=0)
        ax.plot(steps, mean, color="tab:blue", lw=2)
        if len(values) > 1:
            ax.fill_between(
                steps,
                np.nanpercentile(values, 10, axis=0),
                np.nanpercentile(values, 90, axis=0),
                color="tab:blue",
                alpha=0.2,
                lw=0,
            )
        ax.set_title(f"{title} ({len(values)} run{'s' if len(values) > 1 else ''})", fontsize=9)
        ax.set_xlabel("env steps")
        ax.set_ylim(-0.05, 2.05)
        rows += [
            {"panel": title, "step": int(s), "mean_return": float(m), "runs": len(values)}
            for s, m in zip(steps, mean, strict=True)
        ]
    axes[0].set_ylabel("episode return")
    save_figure(fig, args.out, rows)
    print(f"wrote {args.out}.png and {args.out}.csv")


# ----------------------------------------------------------------------------------------------
# ad: Figures 3 to 6, from evaluation files
# ----------------------------------------------------------------------------------------------
@dataclass
class Ad:
    fig3: Sequence[str] = ()
    """Figure 3: evaluation files over the whole evaluation (e.g. a long context and context 10)"""
    fig4: Sequence[str] = ()
    """Figure 4: evaluation files of one dataset at several contexts"""
    fig5: Sequence[str] = ()
    """Figure 5: evaluation files of BC on 1xN Dark, 1xN Light, 1xN Light at context 2"""
    fig6_light: str | None = None
    """Figure 6, left: AD trained on Light data"""
    fig6_dark: str | None = None
    """Figure 6, left and right: AD trained on Dark data"""
    fig6_rl2: str | None = None
    """Figure 6, right: rl2_train.py's held-out trials"""
    source: str | None = None
    """folder of source histories drawn beside Figure 3 (the first --source-runs runs, on their own tasks)"""
    source_runs: int = 20
    """source histories read for Figure 3's source curve"""
    bin: int = 500
    """env steps per point of the curves"""
    final_steps: int = 2500
    """Figure 4's final return: the mean of the 500-step windows in this many last env steps (a multiple of 500)"""
    out_dir: str = "docs/laptop"
    """where the PNG and CSV files go"""


def curve_rows(figure: str, label: str, run: dict, width: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    (steps, values) = binned_curve(run["episodes"], run["num_envs"], run["steps"], width)
    rows = [
        {"figure": figure, "curve": label, "env_step": int(s), "mean_return": round(float(v), 4)}
        for s, v in zip(steps, values, strict=True)
    ]
    return steps, values, rows


def seed_task_bins(members: list[dict], width: int) -> tuple[np.ndarray, np.ndarray]:
    """(bin ends, returns (bins, seeds, tasks)): per training seed and task, the mean return of the episodes that
    ended in each bin of `width` env steps (NaN where none did), every bin kept so that the seeds line up (the bins
    of `ad_eval.binned_returns`)."""
    steps = members[0]["steps"]
    per_seed = [
        per_env_binned_returns(run["episodes"], run["num_envs"], steps, width, keep_empty=True) for run in members
    ]
    bin_ends = per_seed[0][0]
    values = np.stack([per_env for _, per_env in per_seed], axis=1)  # (bins, seeds, tasks)
    return bin_ends, values


def banded_curve(figure: str, label: str, members: list[dict], width: int) -> tuple[dict, list[dict]]:
    """A model's curve over env steps: per bin, the mean over training seeds x tasks and its 95% interval from the
    two-way bootstrap of seeds and tasks (`ad_eval.bootstrap`); bins where no seed's task ended an episode are left
    out. Returns (arrays to draw, CSV rows)."""
    (bin_ends, values) = seed_task_bins(members, width)
    keep = np.isfinite(values).any(axis=(1, 2))
    curve = {"steps": bin_ends[keep], "mean": [], "low": [], "high": []}
    for matrix in values[keep]:  # (seeds, tasks)
        (mean, low, high) = bootstrap(matrix)["mean"]
        curve["mean"].append(mean)
        curve["low"].append(low)
        curve["high"].append(high)
    rows = [
        {
            "figure": figure,
            "curve": label,
            "env_step": int(step),
            "mean_return": round(float(mean), 4),
            "low": round(float(low), 4),
            "high": round(float(high), 4),
            "seeds": len(members),
        }
        for step, mean, low, high in zip(curve["steps"], curve["mean"], curve["low"], curve["high"], strict=True)
    ]
    return curve, rows


def figure3(plt, runs: list[dict], source: dict | None, width: int) -> tuple:
    """Returns over the whole evaluation, the report's Figure 3: each model (its files that differ only in training
    seed) as the mean over seeds x tasks with a 95% band (two-way bootstrap), beside the first file's random policy
    and the source agents learning their own tasks (their band: a bootstrap over runs), on one axis of env steps."""
    first = runs[0]
    (fig, ax) = plt.subplots(figsize=(7, 3.8))
    rows = []
    for label, members in group_by_model(runs):
        first_member = members[0]
        if any(
            not np.array_equal(m["tasks"], first_member["tasks"]) or m["steps"] != first_member["steps"]
            for m in members
        ):
            raise ValueError(f"--fig3: the seeds of {label!r} were evaluated on different tasks or steps")
        seeds = f"{len(members)} seed{'s' if len(members) > 1 else ''}"
        (curve, model_rows) = banded_curve("3", label, members, width)
        (line,) = ax.plot(curve["steps"], curve["mean"], lw=2, label=f"{label} ({seeds})")
        ax.fill_between(curve["steps"], curve["low"], curve["high"], color=line.get_color(), alpha=0.2, lw=0)
        rows += model_rows
    (steps, values, run_rows) = curve_rows("3", "random policy", first["random"], width)
    ax.plot(steps, values, color="gray", ls=":", label="random policy")
    rows += run_rows
    if source is not None:
        label = f"source SAC ({source['num_envs']} runs, own tasks)"
        (curve, source_rows) = banded_curve("3", label, [source], width)
        ax.plot(curve["steps"], curve["mean"], color="black", ls="--", label=label)
        ax.fill_between(curve["steps"], curve["low"], curve["high"], color="black", alpha=0.1, lw=0)
        rows += source_rows
    style(
        ax,
        "env steps on each held-out task",
        f"In-context learning on {first['num_envs']} held-out Dark tasks "
        f"({first['meta']['size']}x{first['meta']['size']}); 95% intervals",
        7,
        loc="lower right",
    )
    return fig, rows


def figure4(plt, runs: list[dict], final_steps: int) -> tuple:
    """The final return against context: each model's mean over training seeds x tasks, its 95% interval from the
    two-way bootstrap of seeds and tasks (`ad_eval.bootstrap`), and the lowest to highest seed."""
    models = group_by_model(runs)
    rows = []
    for label, members in sorted(models, key=lambda model: model[1][0]["meta"]["context"]):
        if any(not np.array_equal(m["tasks"], members[0]["tasks"]) for m in members):
            raise ValueError(f"--fig4: the seeds of {label!r} were evaluated on different tasks")
        final = np.stack([final_returns(m, final_steps) for m in members])  # (seeds, tasks)
        early = np.stack([early_returns(m) for m in members])  # (seeds, tasks)
        stats = bootstrap(final)
        per_seed = finite_mean(final)  # (seeds,)
        rows.append(
            {
                "figure": "4",
                "context": members[0]["meta"]["context"],
                "curve": label,
                "seeds": len(members),
                "tasks": len(members[0]["tasks"]),
                "first500": round(float(finite_mean(early.reshape(-1))), 4),
                "final": round(stats["mean"][0], 4),
                "final_low": round(stats["mean"][1], 4),
                "final_high": round(stats["mean"][2], 4),
                "final_iqm": round(stats["iqm"][0], 4),
                "final_iqm_low": round(stats["iqm"][1], 4),
                "final_iqm_high": round(stats["iqm"][2], 4),
                "final_seed_min": round(float(per_seed.min()), 4),
                "final_seed_max": round(float(per_seed.max()), 4),
                "random_final": round(float(finite_mean(final_returns(members[0]["random"], final_steps))), 4),
            }
        )
    (fig, ax) = plt.subplots(figsize=(5, 3.6))
    contexts = [row["context"] for row in rows]
    finals = np.array([row["final"] for row in rows])
    below = finals - np.array([row["final_low"] for row in rows])
    above = np.array([row["final_high"] for row in rows]) - finals
    ax.errorbar(
        contexts,
        finals,
        yerr=[below, above],
        marker="o",
        capsize=3,
        label=f"last {final_steps:,} steps (95% interval, seeds x tasks)",
    )
    for i, row in enumerate(rows):  # the spread between training seeds
        ax.vlines(
            row["context"],
            row["final_seed_min"],
            row["final_seed_max"],
            color="C0",
            lw=5,
            alpha=0.3,
            label="lowest to highest seed" if i == 0 else None,
        )
    ax.plot(contexts, [row["first500"] for row in rows], marker="s", ls="--", color="gray", label="first 500 steps")
    ax.axhline(rows[0]["random_final"], color="gray", ls=":", label="random policy")
    ax.set_xscale("log")
    ax.set_xticks(contexts, [str(c) for c in contexts])
    num_tasks = len(models[0][1][0]["tasks"])
    seeds = max(row["seeds"] for row in rows)
    style(
        ax,
        "context (timesteps)",
        f"AD on {num_tasks} held-out Dark tasks, {seeds} training seed{'s' if seeds > 1 else ''}",
        8,
    )
    return fig, rows


def figure5(plt, runs: list[dict], width: int) -> tuple:
    """BC on 1xN data, over the whole evaluation."""
    (fig, ax) = plt.subplots(figsize=(7, 3.8))
    rows = []
    for run in runs:
        (steps, values, run_rows) = curve_rows("5", run["label"], run, width)
        ax.plot(steps, values, lw=2, label=run["label"])
        rows += run_rows
    style(ax, "env steps on each held-out task", "BC on 1xN histories", 7)
    return fig, rows


def first_ten_episodes(run: dict) -> np.ndarray:
    """The mean over envs of each env's k-th episode's return, k = 1..10 (fewer where every trial held fewer)."""
    by_index = np.full((run["num_envs"], 10), np.nan)
    for i in range(run["num_envs"]):
        returns = run["episodes"]["return"][run["episodes"]["env"] == i][:10]
        by_index[i, : len(returns)] = returns
    by_index = by_index[:, ~np.isnan(by_index).all(0)]  # a trial may hold fewer than 10 episodes
    return np.nanmean(by_index, axis=0)


def figure6(plt, light: dict | None, dark: dict, rl2: dict | None, width: int) -> tuple:
    """Left: AD on Light data against Dark data, over the whole evaluation. Right: the first 10 episodes of RL² and
    AD on the same held-out tasks."""
    panels = [name for name, run in (("light", light), ("rl2", rl2)) if run is not None]
    (fig, axes) = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    axes = dict(zip(panels, axes[0], strict=True))
    rows = []
    if light is not None:
        for run in (light, dark):
            (steps, values, run_rows) = curve_rows("6 left", run["label"], run, width)
            axes["light"].plot(steps, values, lw=2, label=run["label"])
            rows += run_rows
        style(axes["light"], "env steps on each held-out task", "AD: Light data against Dark data", 7)
    if rl2 is not None:
        for run in (rl2, dark):
            mean = first_ten_episodes(run)
            early = float(finite_mean(early_returns(run)))
            axes["rl2"].plot(
                np.arange(1, len(mean) + 1),
                mean,
                marker="o",
                label=f"{run['label']} (first 500 steps: {early:.2f})",
            )
            rows += [
                {
                    "figure": "6 right",
                    "curve": run["label"],
                    "episode": k + 1,
                    "mean_return": round(float(v), 4),
                    "first500": round(early, 4),
                }
                for k, v in enumerate(mean)
            ]
        style(
            axes["rl2"],
            "episode on the held-out task",
            "RL² against AD: the first 10 episodes",
            7,
            ylabel=light is None,
        )
    return fig, rows


def ad(args: Ad) -> None:
    if not (args.fig3 or args.fig4 or args.fig5 or args.fig6_dark and (args.fig6_light or args.fig6_rl2)):
        raise ValueError("nothing to draw: give --fig3, --fig4, --fig5 or --fig6-dark with --fig6-light/--fig6-rl2")
    if args.bin < 1:
        raise ValueError(f"--bin must be >= 1, got {args.bin}")
    if args.source_runs < 1:
        raise ValueError(f"--source-runs must be >= 1, got {args.source_runs}")
    check_final_steps(args.final_steps)
    # every input read and checked, and the output folder proven writable, before anything is drawn
    paths = [*args.fig3, *args.fig4, *args.fig5, args.fig6_light, args.fig6_dark, args.fig6_rl2]
    runs = {path: load_eval(path) for path in paths if path}
    source = None
    if args.fig3 and args.source:
        first = runs[args.fig3[0]]
        histories = source_histories(args.source, args.source_runs, first["meta"]["size"])
        source = {"episodes": source_episodes(histories, first["steps"]), "steps": first["steps"]}
        source["num_envs"] = int(source["episodes"]["env"].max()) + 1
    prepare_output(args.out_dir)
    plt = pyplot()

    figures = []
    if args.fig3:
        fig3_runs = [runs[path] for path in dict.fromkeys(args.fig3)]
        figures.append(("fig3_ad_dark", *figure3(plt, fig3_runs, source, args.bin)))
    if args.fig4:
        fig4_runs = [runs[path] for path in dict.fromkeys(args.fig4)]
        figures.append(("fig4_context", *figure4(plt, fig4_runs, args.final_steps)))
    if args.fig5:
        figures.append(("fig5_bc", *figure5(plt, [runs[p] for p in args.fig5], args.bin)))
    if args.fig6_dark and (args.fig6_light or args.fig6_rl2):
        light = runs[args.fig6_light] if args.fig6_light else None
        rl2 = runs[args.fig6_rl2] if args.fig6_rl2 else None
        figures.append(("fig6_light_rl2", *figure6(plt, light, runs[args.fig6_dark], rl2, args.bin)))
    for name, fig, rows in figures:
        save_figure(fig, os.path.join(args.out_dir, name), rows)
        print(f"wrote {os.path.join(args.out_dir, name)}.png and .csv")


# ----------------------------------------------------------------------------------------------
# rl2: RL²'s learning curve, from rl2_train.py's <stem>__curve.csv
# ----------------------------------------------------------------------------------------------
@dataclass
class Rl2:
    curve: str
    """the learning-curve CSV of rl2_train.py (<data_dir>/eval/<stem>__curve.csv)"""
    out: str = "docs/9x9/rl2_curve"
    """output path without extension (.png and .csv are written)"""
    bar: float = K.SOLVED_RETURN
    """the return drawn as a dashed line"""
    title: str = "RL² on held-out tasks"
    """the figure's title"""


RL2_CURVES = {"episode_1": "episode 1", "episodes_5_to_10": "episodes 5-10 (mean)", "first_500": "first 500 steps"}
RL2_COLUMNS = ("iteration", "episodes", *RL2_CURVES)


def load_curve(path: str) -> list[dict]:
    """The rows of a learning-curve CSV, by iteration: ints for iteration and episodes, floats
    (NaN where empty) for the rest."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: no such learning-curve file; rl2_train.py writes <data_dir>/eval/<stem>__curve.csv"
        )
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in RL2_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not a learning curve of rl2_train.py (no column {', '.join(missing)})")
        try:
            rows = [
                {
                    key: (int(value) if key in ("iteration", "episodes") else float(value) if value else np.nan)
                    for key, value in row.items()
                }
                for row in reader
            ]
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: line {reader.line_num}: not a number ({e})") from None
    if not rows:
        raise ValueError(f"{path}: no evaluations yet")
    return sorted(rows, key=lambda row: row["iteration"])


def rl2(args: Rl2) -> None:
    rows = load_curve(args.curve)
    prepare_output(os.path.dirname(args.out) or ".")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    iterations = [row["iteration"] for row in rows]
    for column, label in RL2_CURVES.items():
        ax.plot(iterations, [row[column] for row in rows], marker=".", lw=1.5, label=label)
    ax.axhline(args.bar, color="gray", ls="--", lw=1)
    style(ax, "PPO iteration", args.title, 8)
    # "minutes" (wall-clock since the run began) is kept where the curve file records it
    out = [
        {
            "iteration": row["iteration"],
            **({"minutes": row["minutes"]} if "minutes" in row else {}),
            **{label: round(row[column], 4) for column, label in RL2_CURVES.items()},
        }
        for row in rows
    ]
    save_figure(fig, args.out, out)
    print(f"wrote {args.out}.png and {args.out}.csv")


# ----------------------------------------------------------------------------------------------
# table: returns and keeping a solution against finding one, per evaluation file
# ----------------------------------------------------------------------------------------------
@dataclass
class Table:
    evals: Sequence[str]
    """evaluation files of ad_eval.py (or rl2_train.py)"""
    window: int = 250
    """a solved episode that ended fewer than this many env steps before an episode's start is recent"""
    bin: int = 500
    """env steps per bin of the "best bin" column (the bins of Figure 3)"""
    final_steps: int = 2500
    """the "last steps" column: the mean of the 500-step windows in this many last env steps (as Figure 4)"""


def table(args: Table) -> None:
    if args.window < 1:
        raise ValueError(f"--window must be >= 1, got {args.window}")
    if args.bin < 1:
        raise ValueError(f"--bin must be >= 1, got {args.bin}")
    check_final_steps(args.final_steps)
    if not args.evals:
        raise ValueError("--evals needs at least one evaluation file")
    runs = [load_eval(path) for path in args.evals]
    runs.append(runs[0]["random"])  # the floor: the random policy of the first file, as beside Figure 3
    print(
        f"{'evaluation':<56} {'first 500':>9} {'best bin':>9} {f'last {args.final_steps:,}':>11} "
        f"{f'solved after a success in {args.window}':>30} {'solved otherwise':>22}"
    )
    for run in runs:
        early = finite_mean(early_returns(run))
        best = binned_curve(run["episodes"], run["num_envs"], run["steps"], args.bin)[1].max()
        late = finite_mean(final_returns(run, args.final_steps))
        cells = []
        for counts in solved_after(run, args.window).values():
            (rate, envs) = per_env_rate(*counts)
            cells.append(f"{rate:.2f} ({envs} envs)")
        print(f"{run['name'][:56]:<56} {early:>9.2f} {best:>9.2f} {late:>11.2f} {cells[0]:>30} {cells[1]:>22}")


# ----------------------------------------------------------------------------------------------
# sources: one row per source run (its task, the step it first solves it, its final return), so that
# "faster than its source" can be checked from committed files
# ----------------------------------------------------------------------------------------------
@dataclass
class Sources:
    data: str = "data/nx1-light"
    """the Nx1 source histories AD was trained on"""
    runs: int = 0
    """the first this many runs (0: all), as ad_eval.py --source-runs reads them"""
    csv: str = "source_runs.csv"
    """the CSV to write: run, task, steps, solved_step (empty: never), first500, last500"""


def sources(args: Sources) -> None:
    paths = K.history_paths(args.data)
    if args.runs < 0:
        raise ValueError(f"--runs must be >= 0, got {args.runs}")
    paths = paths[: args.runs or len(paths)]
    prepare_output(os.path.dirname(args.csv) or ".")
    rows = []
    for path in paths:
        history, config = K.load_history(path)
        dones = history["terminations"] | history["truncations"]
        episodes = K.stream_episodes(history["rewards"][None], dones[None])
        steps = len(history["rewards"])
        (key_x, key_y, door_x, door_y) = history["tasks"][0].tolist()
        solved = K.first_solved_step(history["rewards"], dones)
        rows.append(
            {
                "run": config.get("run", len(rows)),
                "key_x": key_x,
                "key_y": key_y,
                "door_x": door_x,
                "door_y": door_y,
                "steps": steps,
                "solved_step": "" if solved is None else solved,
                "first500": round(float(K.window_returns(episodes, 1, 0, WINDOW)[0]), 4),
                "last500": round(float(K.window_returns(episodes, 1, steps - WINDOW, steps)[0]), 4),
            }
        )
    write_csv(args.csv, rows)
    solved_steps = np.array([np.inf if row["solved_step"] == "" else row["solved_step"] for row in rows], float)
    median = float(np.median(solved_steps))
    print(
        f"{len(rows)} source runs of {args.data}: {np.isfinite(solved_steps).sum()} reach MA(10) 1.8, median step "
        f"{median:,.0f}; last 500 steps {np.nanmean([row['last500'] for row in rows]):.2f}; wrote {args.csv}"
    )


def read_source_steps(path: str) -> np.ndarray:
    """(runs,) each source run's first step at MA(10) 1.8 (inf: never), from a `sources` CSV."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "solved_step" not in rows[0]:
        raise ValueError(f"{path}: not a source summary (make it with `python -m docs.make_figures sources`)")
    return np.array([float(row["solved_step"]) if row["solved_step"] else np.inf for row in rows])


def median_difference(steps: np.ndarray, source: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES) -> tuple:
    """The median over seeds x tasks of a model's steps to MA(10) 1.8 minus the source runs' median, with a 95%
    interval from a bootstrap that resamples the model's seeds and tasks (two-way, as `bootstrap`) and, apart, the
    source runs (other tasks: nothing to pair). Never-solved counts as infinite, so a median may be infinite."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    (num_seeds, num_tasks) = steps.shape
    tasks = rng.integers(0, num_tasks, (resamples, num_tasks))
    seeds = rng.integers(0, num_seeds, (resamples, num_seeds))
    runs = rng.integers(0, len(source), (resamples, len(source)))
    # "never" is infinite: a median or percentile between two nevers, and never minus never, are NaN, left out
    with np.errstate(invalid="ignore"):
        drawn = np.median(steps[seeds[:, :, None], tasks[:, None, :]].reshape(resamples, -1), axis=1)
        drawn_source = np.median(source[runs], axis=1)
        differences = drawn - drawn_source
        kept = differences[~np.isnan(differences)]
        (low, high) = np.percentile(kept, [2.5, 97.5]) if len(kept) else (np.nan, np.nan)
        value = float(np.median(steps) - np.median(source))
    return value, float(low), float(high)


# ----------------------------------------------------------------------------------------------
# seeds: each model's mean and IQM over training seeds x tasks with two-way bootstrap intervals, the
# rises between windows of equal width, and paired differences between models on the same tasks
# ----------------------------------------------------------------------------------------------
@dataclass
class Seeds:
    evals: Sequence[str]
    """evaluation files on the same tasks; the files of one model that differ only in training seed are grouped"""
    final_steps: int = 2500
    """the "last steps" rows: the mean of the 500-step windows in this many last env steps (a multiple of 500)"""
    csv: str | None = None
    """also write every printed number to this CSV file"""
    source_csv: str | None = None
    """a `sources` CSV: each model's median step to MA(10) 1.8 minus its source runs', with a bootstrap interval"""
    tasks: int = 0
    """only the first this many tasks of every file (0: all): `--num-envs 100` ran the first 100 of the test tasks
    that `--num-envs 206` runs (one `--seed`), so models evaluated on either pair on those 100"""


def first_tasks(run: dict, count: int) -> dict:
    """`run` (a `load_eval` dict) on its first `count` tasks only, its random policy's episodes too."""
    if not 1 <= count <= run["num_envs"]:
        raise ValueError(f"--tasks {count}: {run['name']} holds {run['num_envs']} tasks (ask for 1..{run['num_envs']})")

    def kept(episodes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inside = episodes["env"] < count
        return {key: values[inside] for key, values in episodes.items()}

    random = {**run["random"], "episodes": kept(run["random"]["episodes"]), "num_envs": count}
    return {
        **run,
        "episodes": kept(run["episodes"]),
        "random": random,
        "tasks": run["tasks"][:count],
        "num_envs": count,
    }


def model_scores(members: list[dict], final_steps: int) -> dict[str, np.ndarray]:
    """(training seeds, tasks) matrices of one model's per-env returns, then its per-env rises (a late window minus
    the first 500 steps, cell by cell: the IQM of a rise is the IQM of per-task rises, as ad_eval's table has it).
    "last N steps" is the mean of the 500-step windows that tile them (the README's convention); "pooled" averages
    every episode that ended in them, as the report's scatter of per-episode returns does (short, solved episodes
    weigh more there). A late window that would overlap the first 500 steps (an evaluation shorter than both: RL²'s
    500-step trials) is NaN, not a copy of the first."""
    steps = members[0]["steps"]
    if any(m["steps"] != steps for m in members):
        raise ValueError(f"the seeds of {members[0]['label']!r} were evaluated for different --steps")
    first = f"first {WINDOW} steps"
    scores = {
        "first episode": np.stack([first_episode_returns(m) for m in members]),
        "first 10 episodes": np.stack([first_episodes_mean(m, 10) for m in members]),
        first: np.stack([early_returns(m) for m in members]),
    }
    nan = np.full_like(scores[first], np.nan)
    for last in (WINDOW, final_steps):
        late = f"last {last:,} steps"
        if steps >= WINDOW + last:
            scores[late] = np.stack([final_returns(m, last) for m in members])
        else:
            scores[late] = nan
    pooled = f"last {final_steps:,} steps, pooled"
    if steps >= WINDOW + final_steps:
        scores[pooled] = np.stack(
            [K.window_returns(m["episodes"], m["num_envs"], steps - final_steps, steps) for m in members]
        )
    else:
        scores[pooled] = nan
    for name, (late, early) in rise_names(final_steps).items():
        scores[name] = scores[late] - scores[early]  # (seeds, tasks): each seed-task pair's own rise
    return scores


def first_episodes_mean(run: dict, count: int) -> np.ndarray:
    """Per env, the mean return of its first `count` episodes (NaN if it has fewer): RL²'s trials hold 10 episodes,
    so its first 500 steps and AD's (10 to 60 episodes) are not the same amount of experience; this is."""
    means = np.full(run["num_envs"], np.nan)
    episodes = run["episodes"]
    for i in range(run["num_envs"]):
        mask = episodes["env"] == i
        order = np.argsort(episodes["end_step"][mask], kind="stable")
        returns = episodes["return"][mask][order]
        if len(returns) >= count:
            means[i] = returns[:count].mean()
    return means


def rise_names(final_steps: int) -> dict[str, tuple[str, str]]:
    """Each rise: (the late window, the first) of equal-width 500-step windows."""
    first = f"first {WINDOW} steps"
    return {f"rise: last {last:,} - first {WINDOW}": (f"last {last:,} steps", first) for last in (WINDOW, final_steps)}


def interval_row(kind: str, model: str, versus: str, metric: str, stats: dict, seeds: int, tasks: int) -> dict:
    """One CSV row: a statistic's mean and IQM with their 95% intervals."""
    row = {"kind": kind, "model": model, "versus": versus, "metric": metric, "seeds": seeds, "tasks": tasks}
    for statistic in ("mean", "iqm"):
        (value, low, high) = stats[statistic]
        row[statistic] = round(value, 4)
        row[f"{statistic}_low"] = round(low, 4)
        row[f"{statistic}_high"] = round(high, 4)
    return row


def format_stats(stats: dict, sign: str) -> str:
    """The mean and the IQM cells of one line, each marked * where a difference's interval excludes 0."""
    cells = []
    for statistic in ("mean", "iqm"):
        star = " *" if sign == "+" and excludes_zero(stats[statistic]) else "  "
        cells.append(f"{format_interval(stats[statistic], sign):>24}{star}")
    return " ".join(cells)


def model_block(label: str, seeds_text: str, scores: dict[str, np.ndarray], tasks: int) -> list:
    """Prints one model's windows and rises (mean, IQM, per seed) and returns them as CSV rows."""
    print(f"\n{label}: {seeds_text}")
    print(f"  {'':<30} {'mean [95% CI]':>24}   {'IQM [95% CI]':>24}   per seed (mean)")
    rows = []
    for name, values in scores.items():
        sign = "+" if name.startswith("rise") else ""
        stats = bootstrap(values)
        per_seed = finite_mean(values)
        per_seed_text = " ".join("n/a" if np.isnan(v) else f"{v:{sign}.2f}" for v in per_seed)
        print(f"  {name:<30} {format_stats(stats, sign)}   {per_seed_text}")
        row = interval_row("model", label, "", name, stats, len(values), tasks)
        row["per_seed"] = " ".join(f"{v:.4f}" for v in per_seed)
        rows.append(row)
    return rows


def solved_block(label: str, members: list[dict], tasks: int) -> dict:
    """Prints, and returns as a CSV row, the median over seeds x tasks of the env step at which a task's 10-episode
    average first reaches 1.8 (`ad_eval.per_env_metrics`; a task that never does counts as never, so the median is
    "never" once half of them or more do not), and how many seed-task pairs get there."""
    steps = np.concatenate(
        [per_env_metrics(m["episodes"], m["num_envs"], m["steps"])["steps_to_1.8"] for m in members]
    )  # (seeds * tasks,)
    median = float(np.median(steps))
    reached = int(np.isfinite(steps).sum())
    median_text = f"{median:,.0f}" if np.isfinite(median) else "never"
    print(
        f"  {'steps to MA(10) 1.8, median':<30} {median_text:>24}   "
        f"({reached:,} of {len(steps):,} seed-task pairs reach it)"
    )
    return {
        "kind": "model",
        "model": label,
        "versus": "",
        "metric": "steps to MA(10) 1.8, median",
        "seeds": len(members),
        "tasks": tasks,
        "median_step": median,
        "reached": reached,
    }


def source_block(label: str, members: list[dict], source: np.ndarray, tasks: int) -> dict:
    """Prints, and returns as a CSV row, the model's median step to MA(10) 1.8 minus the source runs' median."""
    steps = np.stack([per_env_metrics(m["episodes"], m["num_envs"], m["steps"])["steps_to_1.8"] for m in members])
    (value, low, high) = median_difference(steps, source)
    text = f"{value:+,.0f} [{low:+,.0f}, {high:+,.0f}]" if np.isfinite(value) else "n/a (a median is never)"
    print(f"  {'minus the source, median steps':<30} {text:>24}   (source: {len(source):,} runs on their own tasks)")
    return {
        "kind": "model",
        "model": label,
        "versus": "source runs",
        "metric": "steps to MA(10) 1.8, median",
        "seeds": len(members),
        "tasks": tasks,
        "mean": value,
        "mean_low": low,
        "mean_high": high,
    }


def pair_block(a: str, b: str, scores: dict[str, dict[str, np.ndarray]], tasks: int) -> list:
    """Prints the paired differences A - B of every window and returns them as CSV rows."""
    print(f"\n{a} - {b}")
    print(f"  {'':<30} {'mean [95% CI]':>24}   {'IQM [95% CI]':>24}")
    rows = []
    for name in scores[a]:
        if np.isnan(scores[a][name]).all() or np.isnan(scores[b][name]).all():
            print(f"  {name:<30} n/a (an evaluation too short for this window)")
            continue
        stats = bootstrap(scores[a][name], scores[b][name])
        print(f"  {name:<30} {format_stats(stats, '+')}")
        row = interval_row("difference", a, b, name, stats, len(scores[a][name]), tasks)
        row["versus_seeds"] = len(scores[b][name])
        rows.append(row)
    return rows


def seeds(args: Seeds) -> None:
    if not args.evals:
        raise ValueError("--evals needs at least one evaluation file")
    check_final_steps(args.final_steps)
    runs = [load_eval(path) for path in args.evals]
    if args.tasks:
        runs = [first_tasks(run, args.tasks) for run in runs]
    if any(not np.array_equal(run["tasks"], runs[0]["tasks"]) for run in runs):
        raise ValueError("the evaluation files hold different tasks: paired comparisons need the same ones")
    if args.csv:
        prepare_output(os.path.dirname(args.csv) or ".")
    models = group_by_model(runs)
    # the random policy's episodes are the same in every file of one task count and --seed; with --tasks, files of other
    # counts drew others (its actions are drawn for all tasks at once): the first file's are the row
    models.append(("random policy", [runs[0]["random"]]))
    scores = {label: model_scores(members, args.final_steps) for label, members in models}
    num_tasks = len(runs[0]["tasks"])

    print(
        f"{num_tasks} tasks ({runs[0]['meta']['split']}); per env first, then the mean and the IQM over training "
        f"seeds x tasks, each with a 95% interval from {BOOTSTRAP_RESAMPLES:,} bootstrap resamples of seeds and "
        f"tasks together; the last {args.final_steps:,} steps: the mean of their 500-step windows"
    )
    rows = []
    source = None if args.source_csv is None else read_source_steps(args.source_csv)
    for label, members in models:
        if label == "random policy":
            seeds_text = f"the episodes of {args.evals[0]}, {num_tasks} tasks"
        else:
            seeds_text = f"{len(members)} training seed{'s' if len(members) > 1 else ''} x {num_tasks} tasks"
        rows += model_block(label, seeds_text, scores[label], num_tasks)
        rows.append(solved_block(label, members, num_tasks))
        if source is not None and label != "random policy":
            rows.append(source_block(label, members, source, num_tasks))

    labels = [label for label, _ in models]
    pairs = list(zip(labels[:-2], labels[1:-1], strict=True)) + [(label, "random policy") for label in labels[:-1]]
    print(
        f"\npaired differences A - B on the same {num_tasks} tasks (the same resampled tasks; seed i of A with seed i "
        "of B where both have as many; the random policy with every seed); * the interval excludes 0"
    )
    for a, b in pairs:
        rows += pair_block(a, b, scores, num_tasks)
    if args.csv:
        write_csv(args.csv, rows)
        print(f"\nwrote {args.csv}")


COMMANDS = {
    "sac": (Sac, sac),
    "ad": (Ad, ad),
    "rl2": (Rl2, rl2),
    "table": (Table, table),
    "seeds": (Seeds, seeds),
    "sources": (Sources, sources),
}


def main(argv: Sequence[str] | None = None) -> None:
    args = tyro.extras.subcommand_cli_from_dict({name: kind for name, (kind, _) in COMMANDS.items()}, args=argv)
    try:
        next(run for kind, run in COMMANDS.values() if isinstance(args, kind))(args)
    except (ValueError, OSError) as e:  # bad input: one line, not a traceback
        print(f"make_figures: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
