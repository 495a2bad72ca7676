"""Figures of the README, made from real runs: learning histories and evaluation files.

    python docs/make_figures.py --nx1 data/nx1-light --onexn-light data/1xn-light --onexn-dark data/1xn-dark

Writes `docs/fig2_sac.png` and the numbers it shows, `docs/fig2_sac.csv`. Per-run curves are mean
episode returns in bins of `--bin` env steps; the Nx1 panel shows the mean over runs and the
10-90% band (the report's Figure 2).
"""

import csv
import os
import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keydoor_env as K  # noqa: E402


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
    out: str = "docs/fig2_sac"
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
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    fig.savefig(args.out + ".png", dpi=110)
    with open(args.out + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["panel", "step", "mean_return", "runs"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}.png and {args.out}.csv")


if __name__ == "__main__":
    sac(tyro.cli(Sac))
