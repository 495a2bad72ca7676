"""docs/make_figures.py: figures, CSVs and the table drawn from small evaluation files built here in
the layout ad_eval.py and rl2_train.py write, checked against numbers computed by hand."""

import ast
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import keydoor_env as K
from docs import make_figures as M

pytest.importorskip("matplotlib")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "docs", "make_figures.py")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def episodes_of(per_env):
    """Flat episode arrays from {env: [(end_step, return), ...]}, in the files' order (by end step)."""
    rows = sorted((end, env, ret) for env, eps in per_env.items() for end, ret in eps)
    return (
        np.array([r[1] for r in rows], dtype=np.int64),
        np.array([r[2] for r in rows], dtype=np.float32),
        np.array([r[0] for r in rows], dtype=np.int64),
    )


def write_eval(path, per_env, random_per_env, steps, algorithm="ad", num_envs=2, size=5, **extra):
    """An evaluation file in the current layout, built directly with numpy."""
    env, ret, end = episodes_of(per_env)
    r_env, r_ret, r_end = episodes_of(random_per_env)
    tasks = K.task_split(size, "validation")[:num_envs]
    meta = {
        "algorithm": algorithm,
        "checkpoint": f"data/checkpoints/{os.path.basename(str(path))[:-4]}.pt",
        "model_config": {"obs_dim": 4, "context": extra.get("context", 500)},
        "split": "validation",
        "num_envs": num_envs,
        "steps": steps,
        "seed": 1,
        "size": size,
        "obs": "dark",
        **extra,
    }
    np.savez_compressed(
        path,
        tasks=tasks,
        episode_env=env,
        episode_return=ret,
        episode_end_step=end,
        random_episode_env=r_env,
        random_episode_return=r_ret,
        random_episode_end_step=r_end,
        meta=np.array(json.dumps(meta)),
    )
    return str(path)


def ad_meta(exp, context):
    return {"context": context, "arrival": False, "greedy": False, "exp_name": exp, "dataset": "nx1-light"}


# env 0: ten episodes in the first 500 steps (return 2), then one episode of return 0 ending at 1000;
# env 1: one episode of return 0 ending at 500, then ten of return 1. Per env first, then across envs:
# bin (0, 500]: (2 + 0) / 2 = 1.0 (pooled over episodes it would be 20/11); bin (500, 1000]: (0 + 1) / 2.
LONG = {
    0: [(50 * k, 2.0) for k in range(1, 11)] + [(1000, 0.0)],
    1: [(500, 0.0)] + [(500 + 50 * k, 1.0) for k in range(1, 11)],
}
SHORT = {0: [(250, 1.0), (1000, 1.0)], 1: [(600, 2.0), (900, 0.0)]}  # no episode of env 1 in the first 500 steps
RANDOM = {0: [(400, 0.0), (800, 1.0)], 1: [(300, 1.0), (700, 1.0)]}
RL2 = {0: [(50 * k, 1.0) for k in range(1, 11)], 1: [(100, 2.0), (200, 0.0)]}  # env 1's trial: 2 episodes
RANDOM_TRIAL = {0: [(250, 1.0)], 1: [(400, 0.0)]}  # within RL²'s 500 steps


@pytest.fixture
def evals(tmp_path):
    folder = tmp_path / "eval"
    folder.mkdir()
    return {
        "long": write_eval(folder / "ad__nx1-light__dark__ctx16__1.npz", LONG, RANDOM, 1000, **ad_meta("ad", 16)),
        "short": write_eval(folder / "ad__nx1-light__dark__ctx4__1.npz", SHORT, RANDOM, 1000, **ad_meta("ad", 4)),
        "light": write_eval(
            folder / "ad__nx1-light__light__ctx16__1.npz", SHORT, RANDOM, 1000, **{**ad_meta("ad", 16), "obs": "light"}
        ),
        "rl2": write_eval(
            folder / "rl2__5x5__1__envs2_trial_seed1.npz",
            RL2,
            RANDOM_TRIAL,
            500,
            algorithm="rl2",
            episodes_per_trial=10,
            iteration=3,
        ),
    }


def write_sources(folder, runs):
    """Source histories in the contract: run r has episodes of 50 steps, every second one solved (1 + 1, the door
    ending it)."""
    folder.mkdir(parents=True)
    for r in range(runs):
        steps = 400 + 100 * r
        rewards = np.zeros(steps, dtype=np.float32)
        truncations = np.zeros(steps, dtype=bool)
        terminations = np.zeros(steps, dtype=bool)
        truncations[49::100] = True  # episodes 1, 3, ...: 50 steps, nothing found
        for end in range(99, steps, 100):  # key then door in episodes 2, 4, ...
            rewards[end - 10] = 1
            rewards[end] = 1
            terminations[end] = True
        history = {
            "observations": np.zeros((steps, 4), np.float32),
            "actions": np.zeros(steps, np.int64),
            "rewards": rewards,
            "terminations": terminations,
            "truncations": truncations,
            "tasks": np.tile(K.task_split(5, "train")[0], (steps, 1)),
        }
        K.save_history(str(folder / f"run_{r:05d}.npz"), history, {"size": 5, "style": "nx1", "light": False})


def test_figure_2_from_source_histories(tmp_path):
    write_sources(tmp_path / "nx1", 2)
    out = tmp_path / "fig" / "fig2_sac"
    M.sac(
        M.Sac(
            nx1=str(tmp_path / "nx1"),
            onexn_light=str(tmp_path / "missing"),
            onexn_dark=str(tmp_path / "nx1"),
            bin=200,
            out=str(out),
        )
    )
    rows = [(r["panel"], int(r["step"]), float(r["mean_return"]), int(r["runs"])) for r in read_csv(f"{out}.csv")]
    # bins of 200 steps hold episodes 0 and 2 in every run: 1.0; the bins of the shortest run only (run 1's 3rd is cut)
    assert rows == [
        (panel, step, 1.0, 2) for panel in ("Nx1 (one fixed task per run)", "1xN Dark") for step in (200, 400)
    ]
    assert os.path.getsize(f"{out}.png") > 0


def test_sources_writes_one_row_per_run_and_seeds_gives_ad_minus_source(tmp_path, capsys):
    """Issue 31, gap 6: the source runs' summary is a committed CSV, and AD's median step to MA(10) 1.8 minus the
    source's comes with a bootstrap interval."""
    write_sources(tmp_path / "nx1", 2)
    out = tmp_path / "out" / "source_runs.csv"
    M.main(["sources", "--data", str(tmp_path / "nx1"), "--csv", str(out)])
    rows = read_csv(out)
    # every second episode solved: a 10-episode average of 1.0, never 1.8; the last 500 steps hold 0, 2, 0, 2, ...
    assert [(int(r["steps"]), r["solved_step"], float(r["last500"])) for r in rows] == [(400, "", 1.0), (500, "", 1.0)]
    assert [int(rows[0][k]) for k in ("key_x", "key_y", "door_x", "door_y")] == K.task_split(5, "train")[0].tolist()
    assert "2 source runs" in capsys.readouterr().out
    assert np.isinf(M.read_source_steps(str(out))).all()
    # the median of (100, 200, 300, 400) minus that of (500, 600, 700)
    (value, low, high) = M.median_difference(np.array([[100.0, 200.0], [300.0, 400.0]]), np.array([500.0, 600, 700]))
    assert value == -350.0 and low <= value <= high < 0
    solved = [(50 * k, 2.0) for k in range(1, 11)]  # MA(10) 1.8 at step 500 on both tasks
    ad = write_eval(tmp_path / "ad.npz", {0: solved, 1: solved}, RANDOM, 1000, **ad_meta("ad", 10))
    source = tmp_path / "src.csv"
    source.write_text("run,solved_step\n0,700\n1,900\n2,\n")
    M.main(["seeds", "--evals", ad, "--final-steps", "500", "--source-csv", str(source)])
    line = next(x for x in capsys.readouterr().out.splitlines() if "minus the source" in x)
    assert "-400 [" in line and "(source: 3 runs" in line  # 500 - median(700, 900, never) = 500 - 900


def test_figures_3_to_6_against_hand_computed_values(tmp_path, evals):
    write_sources(tmp_path / "src", 2)
    out = tmp_path / "figures"
    M.ad(
        M.Ad(
            fig3=[evals["long"], evals["short"]],
            fig4=[evals["long"], evals["short"]],
            fig5=[evals["short"]],
            fig6_light=evals["light"],
            fig6_dark=evals["long"],
            fig6_rl2=evals["rl2"],
            source=str(tmp_path / "src"),
            bin=500,
            final_steps=500,
            out_dir=str(out),
        )
    )
    for name in ("fig3_ad_dark", "fig4_context", "fig5_bc", "fig6_light_rl2"):
        assert (out / f"{name}.png").stat().st_size > 0
    fig3 = {(r["curve"], int(r["env_step"])): float(r["mean_return"]) for r in read_csv(out / "fig3_ad_dark.csv")}
    assert fig3[("ad on nx1-light, dark obs, ctx 16", 500)] == 1.0  # per env first: (2 + 0) / 2
    assert fig3[("ad on nx1-light, dark obs, ctx 16", 1000)] == 0.5
    assert fig3[("ad on nx1-light, dark obs, ctx 4", 500)] == 1.0  # env 1 has no episode in the bin: env 0 alone
    assert fig3[("ad on nx1-light, dark obs, ctx 4", 1000)] == 1.0  # (1 + (2 + 0) / 2) / 2
    assert (
        fig3[("random policy", 500)] == 0.5 and fig3[("random policy", 1000)] == 1.0
    )  # the first file's random episodes
    # source runs on their own tasks: episodes of 50 steps, 0 and 2 in turn: run 0's 8 by step 400 and run 1's 10 by
    # step 500 both average 1 (per run first)
    assert fig3[("source SAC (2 runs, own tasks)", 500)] == pytest.approx((0 + 2) / 2)
    assert ("source SAC (2 runs, own tasks)", 1000) not in fig3
    fig4 = read_csv(out / "fig4_context.csv")
    assert [int(r["context"]) for r in fig4] == [4, 16]  # sorted by context
    # context 16: first 500 steps: env 0 mean 2, env 1 mean 0 -> 1.0; last 500 steps: env 0 0, env 1 1 -> 0.5,
    # and its 95% interval from the bootstrap of the two tasks: resamples average 0, 0.5 or 1 (1/4, 1/2, 1/4)
    assert float(fig4[1]["first500"]) == 1.0 and float(fig4[1]["final"]) == 0.5
    assert (float(fig4[1]["final_low"]), float(fig4[1]["final_high"])) == (0.0, 1.0)
    assert float(fig4[1]["final_iqm"]) == 0.5 and int(fig4[1]["seeds"]) == 1  # two values: nothing to trim
    assert float(fig4[1]["random_final"]) == 1.0  # RANDOM's last 500 steps: env 0 1, env 1 1
    assert float(fig4[0]["first500"]) == 1.0 and float(fig4[0]["final"]) == 1.0  # ctx 4: env 1 has no early episode
    assert {r["curve"] for r in read_csv(out / "fig5_bc.csv")} == {"ad on nx1-light, dark obs, ctx 4"}
    fig6 = read_csv(out / "fig6_light_rl2.csv")
    left = {(r["curve"], int(r["env_step"])) for r in fig6 if r["figure"] == "6 left"}
    assert ("ad on nx1-light, light obs, ctx 16", 500) in left and ("ad on nx1-light, dark obs, ctx 16", 1000) in left
    rl2 = [r for r in fig6 if r["figure"] == "6 right" and r["curve"] == "RL²"]
    # episode 1: (1 + 2) / 2, episode 2: (1 + 0) / 2, episodes 3-10: env 0 alone (env 1's trial ended)
    assert [float(r["mean_return"]) for r in rl2] == [1.5, 0.5] + [1.0] * 8
    assert float(rl2[0]["first500"]) == pytest.approx(round((1.0 + 1.0) / 2, 4))
    ad = [r for r in fig6 if r["figure"] == "6 right" and r["curve"] != "RL²"]
    assert [float(r["mean_return"]) for r in ad[:2]] == [1.0, 1.5]  # by episode index: (2 + 0) / 2, (2 + 1) / 2


def test_table_rows_and_the_random_row_from_the_file(evals, capsys):
    M.table(M.Table(evals=[evals["long"], evals["short"]], window=60, bin=500, final_steps=500))
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert list(rows) == ["ad__nx1-light__dark__ctx16__1", "ad__nx1-light__dark__ctx4__1", "random"]
    first500, best, last = (float(x) for x in rows["ad__nx1-light__dark__ctx16__1"][1:4])
    assert (first500, best, last) == (1.0, 1.0, 0.5)
    # env 0 of LONG: episodes 2 to 11 start where a solved episode ended: 10 with a recent success, 9 solved (the
    # 11th fails); env 1 has none. No recent success: env 0's first episode (solved, 1/1), env 1's 11 (0/11):
    # per env (1 + 0) / 2 = 0.5, where pooling episodes would give 1/12.
    assert rows["ad__nx1-light__dark__ctx16__1"][4:7] == ["0.90", "(1", "envs)"]
    assert rows["ad__nx1-light__dark__ctx16__1"][7:10] == ["0.50", "(2", "envs)"]
    # random row: the random episodes of the first file (RANDOM): first 500 (0 + 1) / 2, bins 0.5 and 1.0, last 1.0
    assert [float(x) for x in rows["random"][2:5]] == [0.5, 1.0, 1.0]


def test_solved_after_a_recent_success():
    # env 0: solved (steps 0-20), fails (20-70), solved (70-90), fails (90-300), solved (300-350); env 1: solved
    episodes = {
        "env": np.array([0, 0, 0, 0, 0, 1]),
        "return": np.array([2.0, 1.0, 2.0, 0.0, 2.0, 2.0]),
        "end_step": np.array([20, 70, 90, 300, 350, 30]),
    }
    counts = M.solved_after({"episodes": episodes, "num_envs": 2}, window=60)
    # recent success: the 2nd, 3rd and 4th episodes of env 0 (a success ended at most 60 steps before they started);
    # the last episode of env 0 starts at 300, 210 steps after the success that ended at 90
    assert {key: (list(solved), list(total)) for key, (solved, total) in counts.items()} == {
        "recent success": ([1, 0], [3, 0]),
        "no recent success": ([2, 1], [2, 1]),
    }
    assert M.per_env_rate(*counts["recent success"]) == (pytest.approx(1 / 3), 1)  # env 1 had no such episode
    assert M.per_env_rate(*counts["no recent success"]) == (1.0, 2)
    assert M.solved_after({"episodes": episodes, "num_envs": 2}, window=0)["recent success"][1].sum() == 0


def test_rl2_learning_curve_from_the_curve_csv(tmp_path):
    columns = ["iteration", "episodes", "first_500", "episodes_5_to_10"] + [f"episode_{k}" for k in range(1, 11)]
    path = tmp_path / "rl2__5x5__1__curve.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerow([50, 50 * 640, 0.61, 1.23456, 0.3] + [1.0] * 9)
        writer.writerow([25, 25 * 640, 0.4, "", 0.2] + [""] * 9)  # out of order, a curve not measured
    M.rl2(M.Rl2(curve=str(path), out=str(tmp_path / "fig" / "rl2_curve")))
    rows = read_csv(tmp_path / "fig" / "rl2_curve.csv")
    assert list(rows[0]) == ["iteration", "episode 1", "episodes 5-10 (mean)", "first 500 steps"]
    assert [r["iteration"] for r in rows] == ["25", "50"]
    assert (
        rows[1]["episodes 5-10 (mean)"] == "1.2346"
        and rows[1]["episode 1"] == "0.3"
        and rows[0]["episodes 5-10 (mean)"] == "nan"
    )
    assert (tmp_path / "fig" / "rl2_curve.png").stat().st_size > 0


def test_the_committed_rl2_curves_regenerate(tmp_path):
    for stem, name in [("rl2__9x9__1", "rl2_curve"), ("rl2-arrival__9x9__1", "rl2_arrival_curve")]:
        M.rl2(M.Rl2(curve=os.path.join(ROOT, "docs", "9x9", f"{stem}__curve.csv"), out=str(tmp_path / name)))
        with (
            open(tmp_path / f"{name}.csv", "rb") as new,
            open(os.path.join(ROOT, "docs", "9x9", f"{name}.csv"), "rb") as old,
        ):
            assert new.read() == old.read()


def test_bad_inputs_are_clear_errors_before_any_output(tmp_path, evals):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="nope.npz: no such evaluation file"):
        M.ad(M.Ad(fig3=[evals["long"], str(tmp_path / "nope.npz")], out_dir=str(out)))
    (tmp_path / "garbage.npz").write_bytes(b"not a zip at all")
    with open(evals["long"], "rb") as f:
        (tmp_path / "truncated.npz").write_bytes(f.read()[:300])
    for name in ("garbage.npz", "truncated.npz"):
        with pytest.raises(ValueError, match=f"{name}: not a readable evaluation file"):
            M.table(M.Table(evals=[str(tmp_path / name)]))
    old = tmp_path / "old_layout.npz"  # before meta and the random episodes: "config"
    np.savez(
        old,
        tasks=np.zeros((2, 4), np.int64),
        episode_env=np.zeros(1, np.int64),
        episode_return=np.zeros(1),
        episode_end_step=np.ones(1, np.int64),
        config=np.array("{}"),
    )
    with pytest.raises(ValueError, match="old_layout.npz: not an evaluation file in the current layout"):
        M.table(M.Table(evals=[str(old)]))
    bad = write_eval(tmp_path / "bad_env.npz", {0: [(10, 1.0)], 5: [(20, 1.0)]}, RANDOM, 1000, **ad_meta("ad", 4))
    with pytest.raises(ValueError, match="bad_env.npz: the policy's episodes name envs outside 0..1"):
        M.ad(M.Ad(fig5=[bad], out_dir=str(out)))
    late = write_eval(tmp_path / "late.npz", LONG, {0: [(2000, 1.0)]}, 1000, **ad_meta("ad", 4))
    with pytest.raises(ValueError, match="late.npz: random episodes end outside steps 1..1000"):
        M.ad(M.Ad(fig5=[late], out_dir=str(out)))
    with pytest.raises(ValueError, match="nothing to draw"):
        M.ad(M.Ad(fig6_dark=evals["long"], out_dir=str(out)))
    assert not out.exists()  # every error came before any output
    with pytest.raises(FileNotFoundError, match="no such learning-curve file"):
        M.rl2(M.Rl2(curve=str(tmp_path / "nope.csv")))
    (tmp_path / "tb.csv").write_text("iteration,minutes,episode 1\n25,1.0,0.5\n")
    with pytest.raises(ValueError, match="tb.csv: not a learning curve of rl2_train.py"):
        M.rl2(M.Rl2(curve=str(tmp_path / "tb.csv")))


@pytest.mark.slow
def test_command_line_runs_as_a_module_and_errors_are_one_line(tmp_path, evals):
    run = subprocess.run(
        [sys.executable, "-m", "docs.make_figures", "table", "--evals", evals["long"]],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1].startswith("random policy")
    run = subprocess.run(
        [sys.executable, "-m", "docs.make_figures", "table", "--evals", str(tmp_path / "nope.npz")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "no such evaluation file" in run.stderr


@pytest.mark.slow
def test_no_sys_path_change_and_no_import_of_other_scripts():
    tree = ast.parse(open(SOURCE).read())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not imported & {"rl2_train", "sac_collect"}  # the protocol's metrics come from ad_eval, the data from files
    assert "sys.path" not in open(SOURCE).read()
    code = "import sys, docs.make_figures; print(sorted(m for m in ('rl2_train', 'sac_collect') if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stderr


def test_seeds_groups_training_seeds_and_pairs_models_on_the_same_tasks(tmp_path, capsys):
    # two training seeds at context 10, one at context 50; env 0 and env 1, 1000 steps, --final-steps 500
    a1 = write_eval(
        tmp_path / "a1.npz",
        {0: [(500, 0.0), (1000, 2.0)], 1: [(500, 0.0), (1000, 0.0)]},
        RANDOM,
        1000,
        **ad_meta("ad", 10),
    )
    a2 = write_eval(
        tmp_path / "a2.npz",
        {0: [(500, 0.0), (1000, 1.0)], 1: [(500, 1.0), (1000, 1.0)]},
        RANDOM,
        1000,
        **ad_meta("ad", 10),
    )
    b1 = write_eval(
        tmp_path / "b1.npz",
        {0: [(500, 2.0), (1000, 2.0)], 1: [(500, 2.0), (1000, 2.0)]},
        RANDOM,
        1000,
        **ad_meta("ad", 50),
    )
    table = tmp_path / "out" / "seeds.csv"
    M.main(["seeds", "--evals", a1, a2, b1, "--final-steps", "500", "--csv", str(table)])
    out = capsys.readouterr().out
    rows = {(r["kind"], r["model"], r["versus"], r["metric"]): r for r in read_csv(table)}
    ctx10 = "ad on nx1-light, dark obs, ctx 10"
    ctx50 = "ad on nx1-light, dark obs, ctx 50"

    def values(kind, model, versus, metric):
        row = rows[(kind, model, versus, metric)]
        assert float(row["mean_low"]) <= float(row["mean"]) <= float(row["mean_high"])
        assert float(row["iqm_low"]) <= float(row["iqm"]) <= float(row["iqm_high"])
        return float(row["mean"]), float(row["iqm"])

    # context 10, seeds x tasks: first 500 steps [[0, 0], [0, 1]]: mean 0.25, IQM of (0, 0, 0, 1) cut 1 each end 0;
    # last 500 steps [[2, 0], [1, 1]]: mean 1, IQM of (0, 1, 1, 2) 1; per seed (2 + 0) / 2 and (1 + 1) / 2
    assert values("model", ctx10, "", "first 500 steps") == (0.25, 0.0)
    assert values("model", ctx10, "", "last 500 steps") == (1.0, 1.0)
    assert rows[("model", ctx10, "", "last 500 steps")]["per_seed"] == "1.0000 1.0000"
    assert int(rows[("model", ctx10, "", "last 500 steps")]["seeds"]) == 2
    # the rise on equal windows, per seed-task pair: [[2, 0], [1, 0]], mean 0.75; the IQM of the per-task rises
    # (0, 0, 1, 2) cut 1 each end is 0.5 (not IQM(last) - IQM(first) = 1, issue 31 gap 8); per seed 1 and 0.5
    assert values("model", ctx10, "", "rise: last 500 - first 500") == (0.75, 0.5)
    assert rows[("model", ctx10, "", "rise: last 500 - first 500")]["per_seed"] == "1.0000 0.5000"
    assert values("model", ctx10, "", "first episode") == (0.25, 0.0)
    # context 50: one seed, 2 on both tasks: no spread
    assert "2.00 [2.00, 2.00]" in out
    # paired: context 10 - context 50 over the first 500 steps 0.25 - 2 and IQM 0 - 2; over the last 1 - 2
    assert values("difference", ctx10, ctx50, "first 500 steps") == (-1.75, -2.0)
    assert values("difference", ctx10, ctx50, "last 500 steps") == (-1.0, -1.0)
    # the random policy (RANDOM): first 500 steps (0 + 1) / 2, last 500 (1 + 1) / 2
    assert values("difference", ctx10, "random policy", "first 500 steps") == (-0.25, -0.5)
    assert values("difference", ctx50, "random policy", "last 500 steps") == (1.0, 1.0)
    assert int(rows[("difference", ctx10, "random policy", "last 500 steps")]["versus_seeds"]) == 1
    block = out[out.index(f"{ctx10}: 2 training seeds x 2 tasks") :]
    rise = next(line for line in block.splitlines() if "rise: last 500 - first 500" in line)
    assert "+0.75 [" in rise and rise.endswith("+1.00 +0.50")  # the mean, then each seed's rise
    other_tasks = write_eval(
        tmp_path / "c.npz", {0: [(500, 0.0)]}, RANDOM, 1000, num_envs=2, size=6, **ad_meta("ad", 10)
    )
    with pytest.raises(SystemExit):
        M.main(["seeds", "--evals", a1, other_tasks])
    assert "different tasks" in capsys.readouterr().err


def test_seeds_pairs_evaluations_of_different_task_counts_on_their_first_tasks(tmp_path, capsys):
    """Issue 31 gap 10: `--num-envs 100` ran the first 100 tasks of `--num-envs 206`; `--tasks 100` pairs models
    evaluated on either (the docs' first-100 pairings have this command)."""
    three = write_eval(
        tmp_path / "three.npz",
        {0: [(500, 2.0), (1000, 2.0)], 1: [(500, 0.0), (1000, 2.0)], 2: [(500, 1.0), (1000, 1.0)]},
        {**RANDOM, 2: [(500, 0.0)]},
        1000,
        num_envs=3,
        **ad_meta("ad", 50),
    )
    two = write_eval(tmp_path / "two.npz", {0: [(500, 0.0)], 1: [(500, 0.0)]}, RANDOM, 1000, **ad_meta("ad", 10))
    with pytest.raises(SystemExit):  # all tasks: not the same ones
        M.main(["seeds", "--evals", three, two, "--final-steps", "500"])
    assert "different tasks" in capsys.readouterr().err
    table = tmp_path / "seeds.csv"
    M.main(["seeds", "--evals", three, two, "--final-steps", "500", "--tasks", "2", "--csv", str(table)])
    rows = {(r["kind"], r["model"], r["versus"], r["metric"]): r for r in read_csv(table)}
    ctx50 = "ad on nx1-light, dark obs, ctx 50"
    ctx10 = "ad on nx1-light, dark obs, ctx 10"
    assert float(rows[("model", ctx50, "", "first 500 steps")]["mean"]) == 1.0  # env 2 (1.0) left out: (2 + 0) / 2
    assert int(rows[("model", ctx50, "", "first 500 steps")]["tasks"]) == 2
    assert float(rows[("difference", ctx10, ctx50, "first 500 steps")]["mean"]) == -1.0
    with pytest.raises(SystemExit):
        M.main(["seeds", "--evals", three, two, "--tasks", "3"])
    assert "--tasks 3: two holds 2 tasks (ask for 1..2)" in capsys.readouterr().err


def test_seeds_gives_both_averaging_conventions_the_first_ten_episodes_and_paired_rises(tmp_path, capsys):
    """Issue 31, gaps 3, 4 and 7: the last steps as the mean of their 500-step windows and pooled over their
    episodes; the first 10 episodes (RL²'s trial) beside the first 500 steps; the difference of two models' rises."""
    # env 0: 10 episodes of 50 steps (2, 0, 2, 0, ...) by step 500, then episodes ending at 600 (2), 700 (2), 1000
    # (0) and 1500 (0). Windows of the last 1,000 steps: (500, 1000] averages 4/3, (1000, 1500] 0: their mean 2/3;
    # pooled over the 4 episodes ending in (500, 1500]: 1. Env 1: one episode a window, return 1 each.
    env0 = [(50 * k, 2.0 * (k % 2)) for k in range(1, 11)] + [(600, 2.0), (700, 2.0), (1000, 0.0), (1500, 0.0)]
    env1 = [(500, 1.0), (1000, 1.0), (1500, 1.0)]
    a = write_eval(tmp_path / "a.npz", {0: env0, 1: env1}, RANDOM, 1500, **ad_meta("ad", 10))
    flat = {0: [(500, 1.0), (1000, 1.0), (1500, 1.0)], 1: env1}  # no rise at all
    b = write_eval(tmp_path / "b.npz", flat, RANDOM, 1500, **ad_meta("ad", 50))
    table = tmp_path / "seeds.csv"
    M.main(["seeds", "--evals", a, b, "--final-steps", "1000", "--csv", str(table)])
    capsys.readouterr()
    rows = {(r["kind"], r["model"], r["versus"], r["metric"]): r for r in read_csv(table)}
    ctx10 = "ad on nx1-light, dark obs, ctx 10"
    ctx50 = "ad on nx1-light, dark obs, ctx 50"
    assert float(rows[("model", ctx10, "", "last 1,000 steps")]["mean"]) == pytest.approx((2 / 3 + 1) / 2, abs=1e-4)
    assert float(rows[("model", ctx10, "", "last 1,000 steps, pooled")]["mean"]) == pytest.approx(1.0)
    # first 10 episodes: env 0's mean 1.0; env 1 has 3 episodes, fewer than 10: left out
    assert float(rows[("model", ctx10, "", "first 10 episodes")]["mean"]) == pytest.approx(1.0)
    # the rise of ctx 10 over the last 500 steps: env 0 from 1.0 to 0, env 1 from 1 to 1: -0.5; ctx 50: 0
    rise = "rise: last 500 - first 500"
    assert float(rows[("model", ctx10, "", rise)]["mean"]) == pytest.approx(-0.5)
    assert float(rows[("difference", ctx10, ctx50, rise)]["mean"]) == pytest.approx(-0.5)


def test_seeds_prints_the_median_step_to_a_solved_average_over_seeds_and_tasks(tmp_path, capsys):
    """A task's 10-episode average first reaches 1.8 at the end of its 10th solved episode; a task that never does
    counts as never in the median over seeds x tasks."""

    def solved(every):  # ten solved episodes, one every `every` steps
        return [(every * k, 2.0) for k in range(1, 11)]

    a1 = write_eval(tmp_path / "a1.npz", {0: solved(50), 1: [(500, 0.0)]}, RANDOM, 1000, **ad_meta("ad", 10))
    a2 = write_eval(tmp_path / "a2.npz", {0: solved(100), 1: solved(60)}, RANDOM, 1000, **ad_meta("ad", 10))
    table = tmp_path / "seeds.csv"
    M.main(["seeds", "--evals", a1, a2, "--final-steps", "500", "--csv", str(table)])
    out = capsys.readouterr().out
    rows = {(r["kind"], r["model"], r["metric"]): r for r in read_csv(table)}
    # seed 1: env 0 at step 500, env 1 never; seed 2: 1000 and 600. Median of (500, 600, 1000, never): 800
    ad = rows[("model", "ad on nx1-light, dark obs, ctx 10", "steps to MA(10) 1.8, median")]
    assert (float(ad["median_step"]), int(ad["reached"]), int(ad["seeds"])) == (800.0, 3, 2)
    assert "800   (3 of 4 seed-task pairs reach it)" in out
    # the random policy (RANDOM) has two episodes per env: never, so its median is never
    random = rows[("model", "random policy", "steps to MA(10) 1.8, median")]
    assert float(random["median_step"]) == float("inf") and int(random["reached"]) == 0
    assert "never   (0 of 2 seed-task pairs reach it)" in out


def test_seeds_leaves_out_windows_an_evaluation_does_not_reach(evals, capsys):
    """RL²'s 500-step trials have no last 500 steps apart from their first: n/a, not a copy of the first window."""
    M.seeds(M.Seeds(evals=[evals["long"], evals["rl2"]]))
    out = capsys.readouterr().out
    rl2 = out[out.index("RL²: 1 training seed") : out.index("random policy: the episodes of")]
    assert [line.split()[-1] for line in rl2.splitlines() if "last" in line] == ["n/a"] * 5  # pooled too
    # 1,000 steps: the last 500 are apart from the first 500; the last 2,500 are not
    ad = out[out.index("ad on nx1-light, dark obs, ctx 16: 1 training seed") : out.index("RL²: 1 training seed")]
    last500 = next(line for line in ad.splitlines() if "last 500 steps" in line)
    assert "0.50 [0.00, 1.00]" in last500
    assert "n/a" in next(line for line in ad.splitlines() if "last 2,500 steps" in line)
    pair = out[out.index("ad on nx1-light, dark obs, ctx 16 - RL²") :]
    assert "last 500 steps                 n/a" in pair
    with pytest.raises(ValueError, match="--final-steps must be a positive multiple of 500, got 300"):
        M.seeds(M.Seeds(evals=[evals["long"]], final_steps=300))


def test_figure_4_groups_training_seeds_and_refuses_different_tasks(tmp_path, evals):
    # a second training seed of the context-16 model: SHORT's episodes (last 500 steps: env 0 1, env 1 (2 + 0) / 2)
    seed2 = write_eval(
        tmp_path / "eval" / "ad__nx1-light__dark__ctx16__2.npz", SHORT, RANDOM, 1000, **ad_meta("ad", 16)
    )
    M.ad(M.Ad(fig4=[evals["long"], seed2, evals["short"]], bin=500, final_steps=500, out_dir=str(tmp_path / "f")))
    rows = read_csv(tmp_path / "f" / "fig4_context.csv")
    assert [(int(r["context"]), int(r["seeds"])) for r in rows] == [(4, 1), (16, 2)]
    # seeds x tasks [[0, 1], [1, 1]]: mean 0.75; per seed: LONG 0.5, SHORT 1.0. The bootstrap draws seed 1 twice and
    # task 1 twice (all 0) in 1/16 of resamples, above 2.5%: the interval reaches 0 -- and 1 at the top
    assert float(rows[1]["final"]) == 0.75
    assert (float(rows[1]["final_low"]), float(rows[1]["final_high"])) == (0.0, 1.0)
    assert (float(rows[1]["final_seed_min"]), float(rows[1]["final_seed_max"])) == (0.5, 1.0)
    # a model is all its settings but the seed: the same label with the arrival token is another model
    arrival = write_eval(
        tmp_path / "eval" / "arrival.npz", SHORT, RANDOM, 1000, **{**ad_meta("ad", 16), "arrival": True}
    )
    M.ad(M.Ad(fig4=[evals["long"], seed2, arrival], bin=500, final_steps=500, out_dir=str(tmp_path / "h")))
    assert [int(r["seeds"]) for r in read_csv(tmp_path / "h" / "fig4_context.csv")] == [2, 1]
    other = write_eval(
        tmp_path / "eval" / "ad__nx1-light__dark__ctx16__3.npz", SHORT, RANDOM, 1000, num_envs=3, **ad_meta("ad", 16)
    )
    with pytest.raises(ValueError, match="different tasks"):
        M.ad(M.Ad(fig4=[evals["long"], other], bin=500, final_steps=500, out_dir=str(tmp_path / "g")))


def test_rl2_runs_with_and_without_the_arrival_token_are_two_models():
    """RL² records the arrival token in its model_config: the two committed 9x9 runs are two models, one seed each."""
    files = [f"docs/9x9/{stem}__9x9__1__envs100_trial_seed1.npz" for stem in ("rl2", "rl2-arrival")]
    groups = M.group_by_model([M.load_eval(path) for path in files])
    assert sorted(label for label, _ in groups) == ["RL²", "RL², arrival token"]
    assert all(len(members) == 1 for _, members in groups)


def test_one_checkpoint_evaluated_two_ways_is_two_rows(evals, tmp_path):
    """Greedy actions, a temperature or a window keep are evaluation settings, never pooled with the default."""
    greedy = write_eval(tmp_path / "eval" / "greedy.npz", SHORT, RANDOM, 1000, **{**ad_meta("ad", 16), "greedy": True})
    keep = write_eval(tmp_path / "eval" / "keep.npz", SHORT, RANDOM, 1000, **{**ad_meta("ad", 16), "window_keep": 15})
    cold = write_eval(tmp_path / "eval" / "cold.npz", SHORT, RANDOM, 1000, **{**ad_meta("ad", 16), "temperature": 0.5})
    groups = M.group_by_model([M.load_eval(path) for path in (evals["long"], greedy, keep, cold)])
    labels = sorted(label for label, _ in groups)
    assert labels == [
        "ad on nx1-light, dark obs, ctx 16",
        "ad on nx1-light, dark obs, ctx 16, greedy",
        "ad on nx1-light, dark obs, ctx 16, temperature 0.5",
        "ad on nx1-light, dark obs, ctx 16, window keeps 15",
    ]
    assert all(len(members) == 1 for _, members in groups)


def test_figure3_draws_a_model_over_its_seeds_with_a_band(evals, tmp_path):
    """Two training seeds of one model are one curve: per bin the mean over seeds x tasks (NaN cells left out) and
    its two-way bootstrap interval, with the seed count in the CSV."""
    seed2 = write_eval(
        tmp_path / "eval" / "ad__nx1-light__dark__ctx16__2.npz", SHORT, RANDOM, 1000, **ad_meta("ad", 16)
    )
    out = tmp_path / "figures"
    M.ad(M.Ad(fig3=[evals["long"], seed2], bin=500, final_steps=500, out_dir=str(out)))
    rows = [r for r in read_csv(out / "fig3_ad_dark.csv") if r["curve"] == "ad on nx1-light, dark obs, ctx 16"]
    assert [int(r["seeds"]) for r in rows] == [2, 2]
    # bin 500: seed 1 (LONG) envs 2 and 0, seed 2 (SHORT) env 0 1 and env 1 none -> (2 + 0 + 1) / 3
    # bin 1000: seed 1 envs 0 and 1, seed 2 env 0 1 and env 1 (2 + 0) / 2 -> (0 + 1 + 1 + 1) / 4
    assert [float(r["mean_return"]) for r in rows] == [1.0, 0.75]
    for row in rows:
        assert float(row["low"]) <= float(row["mean_return"]) <= float(row["high"])
    assert float(rows[1]["low"]) < float(rows[1]["high"])  # the seeds and tasks differ: a band, not a line
    # a bin width that does not divide the steps: the bins are binned_curve's, the last one ending at the last step
    M.ad(M.Ad(fig3=[evals["long"]], bin=400, final_steps=500, out_dir=str(out)))
    rows = [r for r in read_csv(out / "fig3_ad_dark.csv") if r["curve"] == "ad on nx1-light, dark obs, ctx 16"]
    run = M.load_eval(evals["long"])
    (steps, values) = M.binned_curve(run["episodes"], run["num_envs"], run["steps"], 400)
    assert [int(r["env_step"]) for r in rows] == steps.tolist() == [400, 800, 1000]
    assert [float(r["mean_return"]) for r in rows] == pytest.approx(values.tolist(), abs=1e-4)
    # seeds of one model evaluated on other tasks are refused, not pooled
    other = write_eval(
        tmp_path / "eval" / "ad__nx1-light__dark__ctx16__3.npz", SHORT, RANDOM, 1000, num_envs=3, **ad_meta("ad", 16)
    )
    with pytest.raises(ValueError, match="--fig3: the seeds of .* were evaluated on different tasks or steps"):
        M.ad(M.Ad(fig3=[evals["long"], other], bin=500, final_steps=500, out_dir=str(out)))
