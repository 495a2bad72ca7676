"""Figures of the README, made from real runs: learning histories and evaluation files.

    python docs/make_figures.py sac --nx1 data/nx1-light --onexn-light data/1xn-light --onexn-dark data/1xn-dark
    python docs/make_figures.py ad --fig3 long.npz ctx10.npz --fig4 ctx*.npz --fig5 bc*.npz \
        --fig6-light light.npz --fig6-dark dark.npz --fig6-rl2 rl2.npz

    python docs/make_figures.py rl2 --run runs/KeyDoor-Dark-9x9__rl2__1__<time> --out docs/9x9/rl2_curve
    python docs/make_figures.py table --evals a.npz b.npz --window 250

`sac` draws Figure 2 (source learning curves: mean over runs and the 10-90% band, in bins of
`--bin` env steps). `ad` draws Figures 3 to 6 from the `.npz` files of `ad_eval.py` (and the one
`rl2_train.py` writes for its held-out trials). `rl2` draws RL²'s learning
curve (its held-out evaluations, read from the TensorBoard run). Each PNG comes with a CSV of the
numbers it shows. `table` draws nothing: it prints, per evaluation file, the returns over the first
500 steps, the best bin and the last steps, and how often the policy solves its task after a solved
episode in the last `--window` steps and after none (keeping a solution against finding one), with
a random policy on the first file's tasks as the last row.
Returns are averaged per env first, then across envs, as `ad_eval.py` prints them.
"""

import csv
import json
import os
import sys
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keydoor_env as K  # noqa: E402
from ad_eval import binned_curve, per_env_metrics, random_rollout, source_episodes  # noqa: E402


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


def curves(folder: str, width: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
    if not os.path.isdir(folder):
        return None
    names = sorted(n for n in os.listdir(folder) if n.endswith(".npz"))
    runs = [binned_returns(os.path.join(folder, n), width) for n in names]
    steps = runs[0][0]
    return steps, np.stack([r[1][: len(steps)] for r in runs])  # (runs, bins)


def sac(args: Sac) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("Nx1 (one fixed task per run)", args.nx1), ("1xN Light", args.onexn_light),
              ("1xN Dark", args.onexn_dark)]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4), sharey=True)
    rows = []
    for ax, (title, folder) in zip(axes, panels):
        result = curves(folder, args.bin)
        if result is None:
            ax.set_title(f"{title}: no data")
            continue
        steps, values = result
        mean = np.nanmean(values, axis=0)
        ax.plot(steps, mean, color="tab:blue", lw=2)
        if len(values) > 1:
            ax.fill_between(steps, np.nanpercentile(values, 10, axis=0), np.nanpercentile(values, 90, axis=0),
                            color="tab:blue", alpha=0.2, lw=0)
        ax.set_title(f"{title} ({len(values)} run{'s' if len(values) > 1 else ''})", fontsize=9)
        ax.set_xlabel("env steps")
        ax.set_ylim(-0.05, 2.05)
        rows += [{"panel": title, "step": int(s), "mean_return": float(m), "runs": len(values)} for s, m in zip(steps, mean)]
    axes[0].set_ylabel("episode return")
    save_figure(fig, args.out, rows)
    print(f"wrote {args.out}.png and {args.out}.csv")


def save_figure(fig, out: str, rows: list[dict]) -> None:
    """`out`.png and `out`.csv (the rows' keys, the union in first-seen order, are its columns)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    fig.savefig(out + ".png", dpi=110)
    plt.close(fig)
    with open(out + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
        writer.writeheader()
        writer.writerows(rows)


@dataclass
class Ad:
    fig3: Sequence[str] = ()
    """Figure 3: evaluation files over the whole evaluation (e.g. a long context and context 10)"""
    fig4: Sequence[str] = ()
    """Figure 4: evaluation files of one dataset at several contexts"""
    fig5: Sequence[str] = ()
    """Figure 5: evaluation files of BC on 1xN Dark, 1xN Light, 1xN Light at context 2"""
    fig6_light: Optional[str] = None
    """Figure 6, left: AD trained on Light data"""
    fig6_dark: Optional[str] = None
    """Figure 6, left and right: AD trained on Dark data"""
    fig6_rl2: Optional[str] = None
    """Figure 6, right: rl2_train.py's held-out trials"""
    source: Optional[str] = None
    """folder of source histories drawn beside Figure 3 (the first 20 runs, on their own tasks)"""
    bin: int = 500
    """env steps per point of the curves"""
    final_steps: int = 2500
    """Figure 4's final return: the mean over the episodes that ended in this many last env steps"""
    out_dir: str = "docs/laptop"
    """where the PNG and CSV files go"""


def load_eval(path: str) -> dict:
    """An ad_eval.py (or rl2_train.py) evaluation file: episodes, tasks and a label from its settings."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such evaluation file; run ad_eval.py first")
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f["config"]))
        episodes = {"env": f["episode_env"], "return": f["episode_return"], "end_step": f["episode_end_step"]}
        tasks = f["tasks"]
    name = os.path.splitext(os.path.basename(meta["checkpoint"]))[0]
    if meta.get("algorithm") == "rl2-ppo":
        label, steps = "RL²", int(episodes["end_step"].max())
    else:
        parts = name.split("__")  # ad_train.py names checkpoints <exp>__<dataset>__<dark|light>__ctx<C>__<seed>
        what = f"{parts[0]} on {parts[1]}, {parts[2]} obs" if len(parts) >= 3 else name
        label, steps = f"{what}, ctx {meta['context']}", meta["steps"]
    return {"episodes": episodes, "tasks": tasks, "num_envs": len(tasks), "steps": steps, "meta": meta,
            "label": label, "name": name}


def final_returns(run: dict, steps: int) -> np.ndarray:
    """Per env, the mean return of the episodes that ended in the last `steps` env steps (NaN if none)."""
    episodes, late = run["episodes"], run["episodes"]["end_step"] > run["steps"] - steps
    return np.array([episodes["return"][late & (episodes["env"] == i)].mean() if (late & (episodes["env"] == i)).any()
                     else np.nan for i in range(run["num_envs"])])


def style(ax, xlabel: str, title: str, legend_size: int, ylabel: bool = True, **legend) -> None:
    """The axes every figure shares: returns from 0 to 2, a title and a legend."""
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel("episode return")
    ax.set_ylim(-0.05, 2.05)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=legend_size, **legend)


def curve_rows(figure: str, label: str, run: dict, width: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    steps, values = binned_curve(run["episodes"], run["num_envs"], run["steps"], width)
    return steps, values, [{"figure": figure, "curve": label, "env_step": int(s), "mean_return": round(float(v), 4)}
                           for s, v in zip(steps, values)]


def ad(args: Ad) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name: str, rows: list[dict]) -> None:
        save_figure(fig, os.path.join(args.out_dir, name), rows)
        written.append(name)

    if args.fig3:  # returns over the whole evaluation, with the random policy and the source agents
        runs = [load_eval(p) for p in args.fig3]
        first = runs[0]
        fig, ax = plt.subplots(figsize=(7, 3.8))
        rows = []
        for run in runs:
            steps, values, r = curve_rows("3", run["label"], run, args.bin)
            ax.plot(steps, values, lw=2, label=run["label"])
            rows += r
        baseline = {"num_envs": first["num_envs"], "steps": first["steps"],
                    "episodes": random_rollout(first["tasks"], first["steps"], first["meta"]["size"], first["meta"]["seed"])}
        steps, values, r = curve_rows("3", "random policy", baseline, args.bin)
        ax.plot(steps, values, color="gray", ls=":", label="random policy")
        rows += r
        source = source_episodes(args.source, 20, first["steps"]) if args.source else None
        if source is not None:
            envs = int(source["env"].max()) + 1
            run = {"episodes": source, "num_envs": envs, "steps": first["steps"]}
            steps, values, r = curve_rows("3", f"source SAC ({envs} runs, own tasks)", run, args.bin)
            ax.plot(steps, values, color="black", ls="--", label=f"source SAC ({envs} runs, own tasks)")
            rows += r
        style(ax, "env steps on each held-out task", f"In-context learning on {first['num_envs']} held-out Dark tasks "
              f"({first['meta']['size']}x{first['meta']['size']})", 7, loc="lower right")
        save(fig, "fig3_ad_dark", rows)

    if args.fig4:  # final return against context length
        runs = sorted((load_eval(p) for p in args.fig4), key=lambda run: run["meta"]["context"])
        rows = []
        for run in runs:
            metrics = per_env_metrics(run["episodes"], run["num_envs"])
            final = final_returns(run, args.final_steps)
            rows.append({"figure": "4", "context": run["meta"]["context"], "curve": run["label"],
                         "first500": round(float(np.nanmean(metrics["first500"])), 4),
                         "final": round(float(np.nanmean(final)), 4),
                         "final_sem": round(float(np.nanstd(final) / np.sqrt(np.isfinite(final).sum())), 4)})
        fig, ax = plt.subplots(figsize=(5, 3.6))
        contexts = [r["context"] for r in rows]
        ax.errorbar(contexts, [r["final"] for r in rows], yerr=[r["final_sem"] for r in rows], marker="o", capsize=3,
                    label=f"last {args.final_steps:,} steps (mean, s.e. over envs)")
        ax.plot(contexts, [r["first500"] for r in rows], marker="s", ls="--", color="gray", label="first 500 steps")
        ax.set_xscale("log")
        ax.set_xticks(contexts, [str(c) for c in contexts])
        style(ax, "context (timesteps)", "AD on held-out Dark tasks: return against context", 8)
        save(fig, "fig4_context", rows)

    if args.fig5:  # BC on 1xN data
        fig, ax = plt.subplots(figsize=(7, 3.8))
        rows = []
        for path in args.fig5:
            run = load_eval(path)
            steps, values, r = curve_rows("5", run["label"], run, args.bin)
            ax.plot(steps, values, lw=2, label=run["label"])
            rows += r
        style(ax, "env steps on each held-out task", "BC on 1xN histories", 7)
        save(fig, "fig5_bc", rows)

    if args.fig6_dark and (args.fig6_light or args.fig6_rl2):
        dark = load_eval(args.fig6_dark)
        panels = [p for p in ("light", "rl2") if getattr(args, f"fig6_{p}")]
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
        axes = {panel: ax for panel, ax in zip(panels, axes[0])}
        rows = []
        if args.fig6_light:  # left: AD on Light data against Dark data, whole evaluation
            for run in (load_eval(args.fig6_light), dark):
                steps, values, r = curve_rows("6 left", run["label"], run, args.bin)
                axes["light"].plot(steps, values, lw=2, label=run["label"])
                rows += r
            style(axes["light"], "env steps on each held-out task", "AD: Light data against Dark data", 7)
        if args.fig6_rl2:  # right: the first 10 episodes of RL² and AD, on the same held-out tasks
            for run in (load_eval(args.fig6_rl2), dark):
                by_index = np.full((run["num_envs"], 10), np.nan)
                for i in range(run["num_envs"]):
                    returns = run["episodes"]["return"][run["episodes"]["env"] == i][:10]
                    by_index[i, : len(returns)] = returns
                by_index = by_index[:, ~np.isnan(by_index).all(0)]  # a trial may hold fewer than 10 episodes
                mean = np.nanmean(by_index, axis=0)
                first500 = float(np.nanmean(per_env_metrics(run["episodes"], run["num_envs"])["first500"]))
                axes["rl2"].plot(np.arange(1, len(mean) + 1), mean, marker="o", label=f"{run['label']} (first 500 steps: {first500:.2f})")
                rows += [{"figure": "6 right", "curve": run["label"], "episode": k + 1, "mean_return": round(float(v), 4),
                          "first500": round(first500, 4)} for k, v in enumerate(mean)]
            style(axes["rl2"], "episode on the held-out task", "RL² against AD: the first 10 episodes", 7,
                  ylabel=not args.fig6_light)
        save(fig, "fig6_light_rl2", rows)
    for name in written:
        print(f"wrote {os.path.join(args.out_dir, name)}.png and .csv")
    if not written:
        raise SystemExit("nothing to draw: give --fig3, --fig4, --fig5 or --fig6-dark with --fig6-light/--fig6-rl2")


@dataclass
class Rl2:
    run: str
    """a TensorBoard run folder of rl2_train.py (runs/KeyDoor-Dark-...__rl2__...)"""
    out: str = "docs/9x9/rl2_curve"
    """output path without extension (.png and .csv are written)"""
    bar: float = 1.8
    """the return drawn as a dashed line"""
    title: str = "RL² on held-out tasks"
    """the figure's title (the grid size is appended)"""


RL2_CURVES = {"eval/episode_1_return": "episode 1", "eval/return_episodes_5_to_10": "episodes 5-10 (mean)",
              "eval/return_first_500": "first 500 steps"}


def rl2(args: Rl2) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not os.path.isdir(args.run):
        raise SystemExit(f"{args.run}: no such TensorBoard run folder")
    events = EventAccumulator(args.run, size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    if not all(tag in tags for tag in RL2_CURVES) or "charts/SPS" not in tags:
        raise SystemExit(f"{args.run}: no held-out evaluations of rl2_train.py in this run")
    hyper = events.Tensors("hyperparameters/text_summary")[0].tensor_proto.string_val[0].decode()
    params = dict(line.strip("|").split("|")[:2] for line in hyper.splitlines()[2:])
    per_iteration = int(params["num_envs"]) * int(params["episodes_per_trial"])  # the x axis counts trial episodes
    started = events.Scalars("charts/SPS")[0].wall_time
    fig, ax = plt.subplots(figsize=(7, 3.8))
    rows: dict[int, dict] = {}
    for tag, label in RL2_CURVES.items():
        scalars = events.Scalars(tag)
        iterations = np.array([s.step // per_iteration for s in scalars])
        ax.plot(iterations, [s.value for s in scalars], marker=".", lw=1.5, label=label)
        for s, iteration in zip(scalars, iterations):
            # minutes: wall-clock since the first logged iteration (for a resumed run, the pauses count too)
            row = rows.setdefault(int(iteration), {"iteration": int(iteration),
                                                   "minutes": round((s.wall_time - started) / 60, 1)})
            row[label] = round(s.value, 4)
    ax.axhline(args.bar, color="gray", ls="--", lw=1)
    style(ax, "PPO iteration", f"{args.title} ({params['size']}x{params['size']})", 8)
    save_figure(fig, args.out, [rows[k] for k in sorted(rows)])
    print(f"wrote {args.out}.png and {args.out}.csv")


@dataclass
class Table:
    evals: Sequence[str]
    """evaluation files of ad_eval.py (or rl2_train.py)"""
    window: int = 250
    """a solved episode that ended fewer than this many env steps before an episode's start is recent"""
    bin: int = 500
    """env steps per bin of the "best bin" column (the bins of Figure 3)"""
    final_steps: int = 2500
    """the "last steps" column: episodes that ended in this many last env steps (as Figure 4)"""


def solved_after(run: dict, window: int) -> dict[str, tuple[int, int]]:
    """(solved, episodes) over all envs, for episodes with a solved episode (return 2) that ended fewer
    than `window` env steps before their start ("recent success") and for the others ("no recent success")."""
    counts = {"recent success": [0, 0], "no recent success": [0, 0]}
    episodes = run["episodes"]
    for i in range(run["num_envs"]):
        returns, ends = episodes["return"][episodes["env"] == i], episodes["end_step"][episodes["env"] == i]
        starts = np.concatenate([[0], ends[:-1]])  # an episode starts where the one before it ended
        for j in range(len(returns)):
            recent = ((returns[:j] == 2) & (ends[:j] > starts[j] - window)).any()
            count = counts["recent success" if recent else "no recent success"]
            count[0] += int(returns[j] == 2)
            count[1] += 1
    return {key: (solved, total) for key, (solved, total) in counts.items()}


def table(args: Table) -> None:
    if min(args.window, args.bin, args.final_steps) < 1:
        raise SystemExit("--window, --bin and --final-steps must be >= 1")
    print(f"{'evaluation':<56} {'first 500':>9} {'best bin':>9} {f'last {args.final_steps:,}':>11} "
          f"{f'solved after a success in {args.window}':>30} {'solved otherwise':>22}")
    runs = [load_eval(path) for path in args.evals]
    first = runs[0]  # the floor: a random policy on the first file's tasks, as beside Figure 3
    runs.append({"name": "random policy", "num_envs": first["num_envs"], "steps": first["steps"],
                 "episodes": random_rollout(first["tasks"], first["steps"], first["meta"]["size"], first["meta"]["seed"])})
    for run in runs:
        first500 = np.nanmean(per_env_metrics(run["episodes"], run["num_envs"])["first500"])
        best = binned_curve(run["episodes"], run["num_envs"], run["steps"], args.bin)[1].max()
        cells = [f"{s / max(1, n):.2f} ({s:,}/{n:,})" for s, n in solved_after(run, args.window).values()]
        print(f"{run['name'][:56]:<56} {first500:>9.2f} {best:>9.2f} {np.nanmean(final_returns(run, args.final_steps)):>11.2f} "
              f"{cells[0]:>30} {cells[1]:>22}")


if __name__ == "__main__":
    args = tyro.extras.subcommand_cli_from_dict({"sac": Sac, "ad": Ad, "rl2": Rl2, "table": Table})
    {Sac: sac, Ad: ad, Rl2: rl2, Table: table}[type(args)](args)
