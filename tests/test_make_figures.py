"""docs/make_figures.py: every figure is drawn from evaluation files written by the real scripts."""

import csv
import os
import sys

import numpy as np
import pytest

import ad_eval as E
import keydoor_env as K
import rl2_train as R
from test_ad_eval import eval_args, write_checkpoint
from test_rl2_train import tiny

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs"))
import make_figures as M  # noqa: E402

pytest.importorskip("matplotlib")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sac_and_ad_figures(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    checkpoints = tmp_path / "data" / "checkpoints"
    for name, obs_dim, context in [("ad__nx1-light__dark__ctx16__1", 4, 16), ("ad__nx1-light__dark__ctx4__1", 4, 4),
                                   ("ad__nx1-light__light__ctx16__1", 8, 16)]:
        write_checkpoint(checkpoints / f"{name}.pt", obs_dim=obs_dim, context=context, size=4)
    E.main(eval_args(sorted(checkpoints.glob("*.pt")), tmp_path, num_envs=3, steps=600))
    files = {p.name.split("__envs")[0]: str(p) for p in (tmp_path / "eval").glob("*.npz")}
    rl2 = R.main(tiny(tmp_path, iterations=1))["eval"]
    # source histories for Figure 2 and beside Figure 3, in the contract
    folder = tmp_path / "data" / "nx1-light"
    env = K.KeyDoorVectorEnv(1, size=4)
    for run in range(2):
        rng = np.random.default_rng(run)
        observations, _ = env.reset(seed=run)
        history = {k: [] for k in ("observations", "actions", "rewards", "terminations", "truncations", "tasks")}
        for _ in range(300):
            action = rng.integers(5, size=1)
            history["observations"].append(observations[0]), history["actions"].append(action[0])
            history["tasks"].append(env.tasks[0].copy())
            observations, reward, terminated, truncated, _ = env.step(action)
            history["rewards"].append(reward[0]), history["terminations"].append(terminated[0])
            history["truncations"].append(truncated[0])
        arrays = {k: np.array(v) for k, v in history.items()}
        arrays["rewards"] = arrays["rewards"].astype(np.float32)
        K.save_history(str(folder / f"run_{run:05d}.npz"), arrays, {"size": 4, "style": "nx1", "light": False})
    out = tmp_path / "figures"
    M.sac(M.Sac(nx1=str(folder), onexn_light=str(tmp_path / "missing"), onexn_dark=str(folder), bin=100,
                out=str(out / "fig2_sac")))
    assert (out / "fig2_sac.png").exists() and len(read_csv(out / "fig2_sac.csv")) == 2 * 3  # 2 panels x 3 bins
    M.ad(M.Ad(fig3=[files["ad__nx1-light__dark__ctx16__1"], files["ad__nx1-light__dark__ctx4__1"]],
              fig4=[files["ad__nx1-light__dark__ctx16__1"], files["ad__nx1-light__dark__ctx4__1"]],
              fig5=[files["ad__nx1-light__dark__ctx4__1"]], fig6_light=files["ad__nx1-light__light__ctx16__1"],
              fig6_dark=files["ad__nx1-light__dark__ctx16__1"], fig6_rl2=rl2, source=str(folder), bin=200,
              out_dir=str(out)))
    for name in ("fig3_ad_dark", "fig4_context", "fig5_bc", "fig6_light_rl2"):
        assert (out / f"{name}.png").exists()
    fig3 = read_csv(out / "fig3_ad_dark.csv")
    assert {row["curve"] for row in fig3} == {"ad on nx1-light, dark obs, ctx 16", "ad on nx1-light, dark obs, ctx 4",
                                              "random policy", "source SAC (2 runs, own tasks)"}
    fig4 = read_csv(out / "fig4_context.csv")
    assert [int(row["context"]) for row in fig4] == [4, 16]  # sorted by context
    with np.load(files["ad__nx1-light__dark__ctx16__1"], allow_pickle=False) as f:  # the numbers are ad_eval's
        episodes = {"env": f["episode_env"], "return": f["episode_return"], "end_step": f["episode_end_step"]}
    assert float(fig4[1]["first500"]) == pytest.approx(E.summary_row("x", episodes, 3)["first500"], abs=1e-4)
    late = episodes["end_step"] > 600 - 2500  # --final-steps 2500 covers all 600 steps here
    per_env = [episodes["return"][late & (episodes["env"] == i)].mean() for i in range(3)]
    assert float(fig4[1]["final"]) == pytest.approx(np.mean(per_env), abs=1e-4)
    capsys.readouterr()
    M.table(M.Table(evals=[files["ad__nx1-light__dark__ctx16__1"]], bin=200))
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[0] == "ad__nx1-light__dark__ctx16__1" and float(row[1]) == pytest.approx(float(fig4[1]["first500"]), abs=0.006)
    assert float(row[2]) == pytest.approx(max(float(r["mean_return"]) for r in fig3 if r["curve"].endswith("ctx 16")), abs=0.006)
    assert float(row[3]) == pytest.approx(float(fig4[1]["final"]), abs=0.006)
    fig6 = read_csv(out / "fig6_light_rl2.csv")
    assert {row["figure"] for row in fig6} == {"6 left", "6 right"}
    assert sum(row["curve"] == "RL²" for row in fig6) == 3  # the episodes of its 3-episode trials
    # RL²'s learning curve, from its TensorBoard run: the held-out evaluation at its last iteration
    M.rl2(M.Rl2(run=str(next((tmp_path / "runs").glob("*__rl2__*"))), out=str(out / "rl2_curve")))
    curve = read_csv(out / "rl2_curve.csv")
    with np.load(rl2, allow_pickle=False) as f:
        by_episode = f["by_episode"]
    assert [int(row["iteration"]) for row in curve] == [1]
    assert float(curve[0]["episode 1"]) == pytest.approx(by_episode[0], abs=1e-4)
    assert float(curve[0]["episodes 5-10 (mean)"]) == pytest.approx(by_episode[4:].mean() if len(by_episode) > 4 else np.nan,
                                                                    abs=1e-4, nan_ok=True)


def test_solved_after_a_recent_success():
    # env 0: solved (steps 0-20), fails (20-70), solved (70-90), fails (90-300), solved (300-350); env 1: solved
    episodes = {"env": np.array([0, 0, 0, 0, 0, 1]), "return": np.array([2.0, 1.0, 2.0, 0.0, 2.0, 2.0]),
                "end_step": np.array([20, 70, 90, 300, 350, 30])}
    counts = M.solved_after({"episodes": episodes, "num_envs": 2}, window=60)
    # recent success: the 2nd, 3rd and 4th episodes of env 0 (a success ended at most 60 steps before they started);
    # the last episode of env 0 starts at 300, 210 steps after the success that ended at 90
    assert counts == {"recent success": (1, 3), "no recent success": (3, 3)}
    assert M.solved_after({"episodes": episodes, "num_envs": 2}, window=0)["recent success"] == (0, 0)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such evaluation file"):
        M.ad(M.Ad(fig3=[str(tmp_path / "nope.npz")], out_dir=str(tmp_path)))
    with pytest.raises(SystemExit, match="no such TensorBoard run folder"):
        M.rl2(M.Rl2(run=str(tmp_path / "nope")))
