"""ad_eval.py: KV cache against full recompute, windows and intervals, outputs and bad input, on checkpoints
that ad_train.py wrote from a dataset that sac_collect.py wrote."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import ad_eval as E
import ad_train as A
import keydoor_env as K
import rl2_train as R
import sac_collect as S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(data_dir, **overrides):
    """A tiny model trained by ad_train.py on `data_dir`'s nx1-light; returns its checkpoint's path."""
    flags = dict(
        data_dir=str(data_dir),
        episode_stride=1,  # every episode and no arrival token unless asked: the fixture's "dark" and "light"
        arrival_token=False,  # are the plain tokens, "arrival" the token's path
        context=16,
        iterations=5,
        batch_size=4,
        n_layer=1,
        n_head=2,
        n_embd=16,
        d_ff=16,
        warmup_iterations=1,
        log_every=5,
        val_every=5,
        save_every=5,
        eval_every=0,
        progress=False,
        cuda=False,
    )
    flags.update(overrides)
    return A.main(A.Args(**flags))["checkpoint"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Nx1 Light dataset written by sac_collect.py (4x4 grid) and four checkpoints ad_train.py wrote on it:
    Dark (seeds 1 and 2), Light and Dark with the arrival token, in <tmp>/data/checkpoints/."""
    tmp = tmp_path_factory.mktemp("trained")
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        S.main(
            S.Args(
                style="nx1",
                light=True,
                num_runs=2,
                steps=120,
                size=4,
                group_size=2,
                batch_size=8,
                hidden=8,
                learning_starts=100,
                log_every=100,
                progress=False,
                data_dir="data",
                cuda=False,
            )
        )
        paths = {
            "dark": train(tmp / "data"),
            "seed2": train(tmp / "data", seed=2),
            "light": train(tmp / "data", light_obs=True),
            "arrival": train(tmp / "data", arrival_token=True, exp_name="ad-arrival"),
        }
    finally:
        os.chdir(cwd)
    return {"data": tmp / "data", **{name: tmp / path for name, path in paths.items()}}


@pytest.fixture
def data(trained, tmp_path, monkeypatch):
    """A copy of the trained data dir (dataset and checkpoints) in this test's folder, the working directory."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(trained["data"], tmp_path / "data")
    return tmp_path / "data"


def ckpt(data, name):
    """The path of one of the fixture's checkpoints in the copied data dir."""
    names = {
        "dark": "ad__nx1-light__dark__ctx16__1.pt",
        "seed2": "ad__nx1-light__dark__ctx16__2.pt",
        "light": "ad__nx1-light__light__ctx16__1.pt",
        "arrival": "ad-arrival__nx1-light__dark__ctx16__1.pt",
    }
    return data / "checkpoints" / names[name]


def rewrite(path, change):
    """A checkpoint ad_train.py wrote, loaded, changed by `change(checkpoint)` and saved to `path`."""
    checkpoint = torch.load(path, weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, path)


def eval_args(checkpoints, out_dir, **overrides):
    flags = dict(
        checkpoints=tuple(str(c) for c in checkpoints),
        num_envs=3,
        steps=120,
        out_dir=None if out_dir is None else str(out_dir),
        progress=False,
        cuda=False,
    )
    flags.update(overrides)
    return E.Args(**flags)


# ----------------------------------------------------------------------------------------------
# The rollout
# ----------------------------------------------------------------------------------------------
def test_window_starts():
    starts = A.window_starts(40, 10)
    assert starts[:10].tolist() == [0] * 10
    assert starts[10] == 6  # the 11th token refills the cache with the last 5 tokens
    lengths = np.arange(40) - starts + 1
    assert lengths.min() >= 1 and lengths.max() == 10 and (lengths[10:] >= 5).all()


def test_window_starts_keep():
    """A larger keep restarts more often and never holds fewer tokens; keep = context slides a step at a time."""
    for keep in (1, 3, 9, 10):
        starts = A.window_starts(40, 10, keep)
        lengths = np.arange(40) - starts + 1
        assert starts[:10].tolist() == [0] * 10
        assert lengths.max() == 10 and (lengths[10:] >= keep).all()
        assert starts[10] == 11 - keep
    np.testing.assert_array_equal(A.window_starts(40, 10, 0), A.window_starts(40, 10, 5))  # 0: half the context
    np.testing.assert_array_equal(A.window_starts(40, 10, 10)[9:], np.arange(31))  # sliding: the last 10 tokens


def test_evaluations_that_differ_write_different_files():
    """Greedy actions, a temperature and a window keep are in the evaluation file's name: they never overwrite the
    default's."""
    names = {
        E.run_suffix(eval_args(["a.pt"], None)),
        E.run_suffix(eval_args(["a.pt"], None, greedy=True)),
        E.run_suffix(eval_args(["a.pt"], None, window_keep=9)),
        E.run_suffix(eval_args(["a.pt"], None, greedy=True, window_keep=9)),
        E.run_suffix(eval_args(["a.pt"], None, temperature=0.5)),
    }
    assert len(names) == 5
    assert E.run_suffix(eval_args(["a.pt"], None, temperature=0.5)) == "test3_steps120_seed1_temp0.5"
    assert E.run_suffix(eval_args(["a.pt"], None, window_keep=9)) == "test3_steps120_seed1_keep9"


@pytest.mark.parametrize("keep", [0, 9, 12])
def test_kv_cache_rollout_equals_full_recompute_for_any_keep(keep):
    """The cache follows `window_keep`'s windows: whatever a restart keeps, cached and recomputed rollouts agree."""
    torch.manual_seed(0)
    model = A.DecisionModel(
        A.ModelConfig(obs_dim=4, context=12, n_layer=2, n_head=2, n_embd=16, d_ff=32, dropout=0.0, arrival=False)
    ).eval()
    tasks = K.task_split(5, "test")[:3]
    fast = A.rollout(model, tasks, 80, 5, 3, torch.device("cpu"), window_keep=keep)
    slow = A.rollout(model, tasks, 80, 5, 3, torch.device("cpu"), window_keep=keep, full_recompute=True)
    for key in ("env", "return", "end_step"):
        np.testing.assert_array_equal(fast["episodes"][key], slow["episodes"][key])


@pytest.mark.parametrize("arrival", [False, True])
def test_kv_cache_rollout_equals_full_recompute(arrival):
    """The fast path (KV cache, refilled at every new window) and the reference (every window recomputed)
    feed the same tokens and take the same actions, greedy and sampled, over many refills."""
    torch.manual_seed(0)
    model = A.DecisionModel(
        A.ModelConfig(obs_dim=4, context=12, n_layer=2, n_head=2, n_embd=16, d_ff=32, dropout=0.0, arrival=arrival)
    ).eval()
    tasks = K.task_split(5, "test")[:3]
    for greedy in (True, False):
        fast = A.rollout(model, tasks, 150, 5, 3, torch.device("cpu"), greedy=greedy, full_recompute=False)
        slow = A.rollout(model, tasks, 150, 5, 3, torch.device("cpu"), greedy=greedy, full_recompute=True)
        for key in ("env", "return", "end_step"):
            np.testing.assert_array_equal(fast["episodes"][key], slow["episodes"][key])
        for key in fast["tokens"]:
            torch.testing.assert_close(fast["tokens"][key], slow["tokens"][key], rtol=0, atol=0)
    assert not model.training


def test_temperature_sharpens_sampling_toward_greedy():
    """Temperature 1 is the default sampling bit for bit; a tiny temperature takes the argmax's actions."""
    torch.manual_seed(0)
    model = A.DecisionModel(
        A.ModelConfig(obs_dim=4, context=12, n_layer=1, n_head=2, n_embd=16, d_ff=16, dropout=0.0, arrival=False)
    ).eval()
    tasks = K.task_split(5, "test")[:3]
    cpu = torch.device("cpu")
    default = A.rollout(model, tasks, 150, 5, 3, cpu)["tokens"]["prev_actions"]
    one = A.rollout(model, tasks, 150, 5, 3, cpu, temperature=1.0)["tokens"]["prev_actions"]
    cold = A.rollout(model, tasks, 150, 5, 3, cpu, temperature=1e-4)["tokens"]["prev_actions"]
    greedy = A.rollout(model, tasks, 150, 5, 3, cpu, greedy=True)["tokens"]["prev_actions"]
    torch.testing.assert_close(default, one, rtol=0, atol=0)
    torch.testing.assert_close(cold, greedy, rtol=0, atol=0)
    assert not torch.equal(default, greedy)


def test_rollouts_are_seeded_and_keep_the_training_mode():
    model = A.DecisionModel(
        A.ModelConfig(obs_dim=4, context=12, n_layer=1, n_head=2, n_embd=16, d_ff=16, dropout=0.1, arrival=False)
    ).train()
    tasks = K.task_split(5, "test")[:3]
    runs = [A.rollout(model, tasks, 150, 5, seed, torch.device("cpu"))["episodes"] for seed in (3, 3, 4)]
    assert model.training  # dropout was off during the rollout, and training mode is restored
    np.testing.assert_array_equal(runs[0]["return"], runs[1]["return"])
    np.testing.assert_array_equal(runs[0]["end_step"], runs[1]["end_step"])
    assert not np.array_equal(runs[0]["end_step"], runs[2]["end_step"])


@pytest.mark.parametrize("arrival", [False, True])
def test_rollout_tokens_match_training_tokens(arrival):
    """The tokens fed at evaluation are exactly those ad_train builds from the same trajectory's file."""
    model = A.DecisionModel(
        A.ModelConfig(obs_dim=8, context=30, n_layer=1, n_head=2, n_embd=16, d_ff=16, dropout=0.0, arrival=arrival)
    ).eval()
    tasks = K.task_split(4, "test")[:2]
    steps = 160
    fed = A.rollout(model, tasks, steps, 4, 0, torch.device("cpu"))["tokens"]
    for i in range(2):  # rebuild env i's trajectory as a history file would hold it
        actions = np.append(fed["prev_actions"][i, 1:].numpy(), 0)[: steps - 1]
        env = K.KeyDoorEnv(size=4, light=True, task=tasks[i])
        (obs, _) = env.reset(seed=0)
        hist = {k: [] for k in K.HISTORY_DTYPES}
        for a in actions:
            hist["observations"].append(obs)
            hist["tasks"].append(env.task)
            (obs, r, term, trunc, _) = env.step(int(a))
            hist["actions"].append(a)
            hist["rewards"].append(r)
            hist["terminations"].append(term)
            hist["truncations"].append(trunc)
            if term or trunc:
                (obs, _) = env.reset()
        hist = {k: np.array(v) for k, v in hist.items()}
        hist["arrivals"] = A.arrival_cells(hist, 4, "replay")
        run = A.select_steps(hist, 0)
        n = steps - 1
        np.testing.assert_allclose(fed["prev_arrivals"][i, :n].numpy() * 3, run["prev_arrivals"], atol=1e-6)
        np.testing.assert_array_equal(fed["observations"][i, :n].numpy(), run["observations"])
        np.testing.assert_array_equal(fed["prev_actions"][i, :n].numpy(), run["prev_actions"])
        np.testing.assert_array_equal(fed["prev_rewards"][i, :n].numpy(), run["prev_rewards"])
        np.testing.assert_array_equal(fed["prev_dones"][i, :n].numpy(), run["prev_dones"])
    assert fed["prev_dones"][:, 1:].sum() >= 2  # episode boundaries were crossed


# ----------------------------------------------------------------------------------------------
# Windows of equal width, per env first
# ----------------------------------------------------------------------------------------------
def test_per_env_metrics_weight_envs_equally():
    episodes = {
        "env": np.array([0] * 10 + [1] * 2),
        "return": np.array([2.0] * 10 + [0.0] * 2),
        "end_step": np.concatenate([np.arange(1, 11) * 10, [50, 100]]),
    }
    row = E.summary_row("x", episodes, 2, 100)
    assert row["first500"] == pytest.approx(1.0)  # not 10/6 as a mean over episodes would say
    assert row["reached"] == 1 and row["median_steps_to_1.8"] == np.inf  # the median env never got there
    metrics = E.per_env_metrics(episodes, 2, 100)
    assert metrics["steps_to_1.8"].tolist() == [100, np.inf]
    assert np.isnan(metrics["last500"]).all() and np.isnan(row["rise"])  # 100 steps: the windows would overlap


def test_difference_row_is_paired_on_the_same_tasks():
    """AD minus the random policy: the difference of the two rows' values, with a paired interval that a shared
    task effect does not widen; a policy minus itself is exactly 0."""
    # env i: returns i / 2 in its first 500 steps and i / 2 + 0.5 in its last; the baseline i / 2 throughout
    env = np.repeat(np.arange(4), 2)
    first = np.arange(4) / 2
    episodes = {"env": env, "return": np.stack([first, first + 0.5], 1).ravel(), "end_step": np.tile([400, 1000], 4)}
    baseline = {"env": env, "return": np.repeat(first, 2), "end_step": np.tile([400, 1000], 4)}
    row = E.difference_row("d", episodes, baseline, 4, 1000)
    assert row["first500"] == pytest.approx(0.0) and row["first500_low"] == row["first500_high"] == pytest.approx(0.0)
    assert row["last500"] == pytest.approx(0.5) and row["last500_low"] == pytest.approx(0.5)  # the task effect cancels
    assert row["rise"] == pytest.approx(0.5)
    assert row["difference"] and "reached" not in row
    itself = E.difference_row("d", episodes, episodes, 4, 1000)
    assert itself["last500"] == 0.0 and itself["rise"] == 0.0
    table = E.format_table([E.summary_row("ad", episodes, 4, 1000), row])
    assert "+0.50 [+0.50, +0.50]" in table.splitlines()[-2]  # a difference carries its sign


def test_windows_are_per_env_and_of_equal_width():
    # env 0: a 2 ending at 400 and at 600, five 2s in (1500, 2000]; env 1: a 0 at 300, a 1 at 1000 and at 1900
    episodes = {
        "env": np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 1]),
        "return": np.array([2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 0.0, 1.0, 1.0]),
        "end_step": np.array([400, 600, 1600, 1700, 1800, 1900, 2000, 300, 1000, 1900]),
    }
    np.testing.assert_array_equal(K.window_returns(episodes, 3, 0, 500), [2.0, 0.0, np.nan])
    np.testing.assert_array_equal(K.window_returns(episodes, 3, 1500, 2000), [2.0, 1.0, np.nan])
    np.testing.assert_array_equal(E.per_env_metrics(episodes, 3, 2000)["last500"], [2.0, 1.0, np.nan])
    # the last 1,500 steps as three 500-step windows: env 0 (500, 1000] 2, (1000, 1500] none, (1500, 2000] 2;
    # env 1 (500, 1000] 1, (1000, 1500] none, (1500, 2000] 1
    np.testing.assert_array_equal(E.late_returns(episodes, 3, 2000, 1500), [2.0, 1.0, np.nan])
    # with a 0 among env 0's five late episodes, its last 2,000 steps are windows of 2 (one episode), 2 (one) and
    # 8/5 (five): their mean, not the pooled 12/7, which would weigh the window of five episodes five times
    mixed = dict(episodes, **{"return": np.array([2.0, 2.0, 0.0, 2.0, 2.0, 2.0, 2.0, 0.0, 1.0, 1.0])})
    assert E.late_returns(mixed, 3, 2000, 2000)[0] == pytest.approx((2 + 2 + 8 / 5) / 3)
    # windows wholly before step 0 are left out: the last 2,500 steps of a 1,000-step evaluation
    np.testing.assert_array_equal(E.late_returns(episodes, 3, 1000, 2500), [2.0, 0.5, np.nan])


def test_binned_curve_weights_envs_equally():
    episodes = {
        "env": np.array([0, 0, 0, 1]),
        "return": np.array([2.0, 2.0, 2.0, 0.0]),
        "end_step": np.array([10, 20, 60, 50]),
    }
    (steps, values) = E.binned_curve(episodes, 2, 120, 50)
    assert steps.tolist() == [50, 100] and values.tolist() == [1.0, 2.0]
    late = dict(episodes, end_step=np.array([10, 20, 110, 50]))
    assert E.binned_curve(late, 2, 120, 50)[0].tolist() == [50, 120]  # the last bin ends at the last step


# ----------------------------------------------------------------------------------------------
# Intervals: the two-way bootstrap of training seeds and tasks
# ----------------------------------------------------------------------------------------------
def test_interquartile_mean_is_rliables():
    # scipy.stats.trim_mean(x, 0.25): int(n / 4) values cut at each end; NaN left out
    assert E.interquartile_mean(np.arange(1.0, 9.0)) == 4.5  # 3, 4, 5, 6
    assert E.interquartile_mean(np.array([0.0, 0.0, 1.0, 9.0, 100.0])) == pytest.approx(10 / 3)  # cut 1 each end
    assert E.interquartile_mean(np.array([5.0, np.nan, 1.0, 3.0])) == 3.0  # 3 finite values: nothing cut
    assert np.isnan(E.interquartile_mean(np.array([np.nan, np.nan])))
    batch = np.array([[1.0, 2.0, 3.0, 100.0], [0.0, 0.0, 0.0, 4.0]])
    np.testing.assert_array_equal(E.interquartile_mean(batch), [2.5, 0.0])


def test_bootstrap_with_one_seed_resamples_tasks_alone():
    rng = np.random.default_rng(0)
    scores = rng.random((1, 40))
    one = E.bootstrap(scores)
    # the same tasks repeated as identical seeds: resampling seeds changes nothing, so the interval is the same
    same = E.bootstrap(np.repeat(scores, 5, axis=0))
    for statistic in ("mean", "iqm"):
        assert one[statistic] == pytest.approx(same[statistic])
    assert one["mean"][0] == pytest.approx(scores.mean())
    assert one["mean"][1] < scores.mean() < one["mean"][2]
    assert E.bootstrap(scores) == one  # a fixed generator
    # a difference with itself is 0, with no width
    assert E.bootstrap(scores, scores) == {"mean": (0.0, 0.0, 0.0), "iqm": (0.0, 0.0, 0.0)}


def test_bootstrap_widens_with_the_seed_variance():
    rng = np.random.default_rng(1)
    tasks = rng.normal(0, 0.3, (1, 50))
    noise = rng.normal(0, 0.3, (5, 50))
    seed_effect = rng.normal(0, 1, (5, 1))
    widths = []
    for scale in (0.0, 0.3, 1.0):
        stats = E.bootstrap(tasks + noise + scale * seed_effect)
        widths.append([stats[s][2] - stats[s][1] for s in ("mean", "iqm")])
    widths = np.array(widths)
    assert (np.diff(widths, axis=0) > 0).all()  # wider at every step, for the mean and the IQM
    assert (widths[2] > 2 * widths[0]).all()


def test_bootstrap_covers_the_true_mean_with_ten_seeds():
    """Synthetic scores with a known seed effect: 10 training seeds x 30 tasks, seed, task and noise effects of
    equal variance (0.3^2), true mean 0 (the IQM's too: every draw is symmetric about 0). The 95% intervals cover 0
    in about 95% of replicates (0.93 for the mean and 0.95 for the IQM, measured over 1,000; 300 here, whose standard
    error is 0.013). With 3 seeds the same check gives about 0.75 (docs/reproduction.md)."""
    rng = np.random.default_rng(7)
    covered = {"mean": 0, "iqm": 0}
    replicates = 300
    for replicate in range(replicates):
        scores = rng.normal(0, 0.3, (10, 1)) + rng.normal(0, 0.3, (1, 30)) + rng.normal(0, 0.3, (10, 30))
        stats = E.bootstrap(scores, resamples=500, seed=replicate)
        for statistic in covered:
            covered[statistic] += stats[statistic][1] <= 0 <= stats[statistic][2]
    for statistic, hits in covered.items():
        assert 0.89 <= hits / replicates <= 0.99, (statistic, hits)


def test_paired_bootstrap_pairs_seeds_and_tasks():
    rng = np.random.default_rng(2)
    shared = rng.normal(0, 1, (3, 40))  # what two models share on the same tasks and seeds
    a = shared + 0.5 + rng.normal(0, 0.05, (3, 40))
    b = shared + rng.normal(0, 0.05, (3, 40))
    paired = E.bootstrap(a, b)
    assert paired["mean"][0] == pytest.approx(a.mean() - b.mean())
    assert 0.4 < paired["mean"][1] < 0.5 < paired["mean"][2] < 0.6  # the shared spread cancels
    apart = E.bootstrap(a, b[::-1])  # seed i of a against seed 2 - i of b: their shared parts no longer cancel
    assert apart["mean"][2] - apart["mean"][1] > 5 * (paired["mean"][2] - paired["mean"][1])
    # a one-seed baseline (the random policy) is paired with every seed
    random_policy = rng.normal(0, 1, (1, 40))
    against = E.bootstrap(a, random_policy)
    assert against["mean"][0] == pytest.approx(a.mean() - random_policy.mean())
    with pytest.raises(ValueError, match="same tasks"):
        E.bootstrap(a, b[:, :30])


def test_bootstrap_leaves_out_nan():
    scores = np.array([[1.0, np.nan, 3.0], [np.nan, np.nan, np.nan]])
    stats = E.bootstrap(scores)
    assert stats["mean"][0] == 2.0 and 1.0 <= stats["mean"][1] <= stats["mean"][2] <= 3.0
    none = E.bootstrap(np.full((2, 3), np.nan))
    assert all(np.isnan(v) for v in none["mean"])


# ----------------------------------------------------------------------------------------------
# End to end, on checkpoints ad_train.py wrote
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_end_to_end(data, tmp_path, capsys):
    paths = [ckpt(data, name) for name in ("dark", "light", "arrival")]
    rows = E.main(eval_args(paths, tmp_path / "eval", plot=True, source_runs=2))
    assert len(rows) == 3 and all(row["envs"] == 3 for row in rows)
    with np.load(tmp_path / "eval" / "ad__nx1-light__dark__ctx16__1__test3_steps120_seed1.npz") as f:
        tasks = f["tasks"]
        meta = json.loads(str(f["meta"]))
        assert len(f["episode_return"]) == len(f["episode_env"]) == len(f["episode_end_step"]) > 0
        assert f["episode_end_step"].max() <= 120
        random_episodes = {k: f[f"random_episode_{k}"] for k in ("env", "return", "end_step")}
    assert tasks.shape == (3, 4) and {tuple(t) for t in tasks} <= {tuple(t) for t in K.task_split(4, "test")}
    assert meta["split"] == "test" and meta["context"] == 16 and meta["algorithm"] == "ad" and meta["obs"] == "dark"
    assert meta["model_config"]["n_embd"] == 16 and meta["checkpoint"] == str(paths[0])
    assert meta["exp_name"] == "ad" and meta["dataset"] == "nx1-light" and meta["iteration"] == 5
    for key, value in K.random_episodes(tasks, 4, 120, 1).items():
        np.testing.assert_array_equal(random_episodes[key], value)
    with np.load(tmp_path / "eval" / "ad__nx1-light__light__ctx16__1__test3_steps120_seed1.npz") as f:
        assert json.loads(str(f["meta"]))["obs"] == "light"
    with np.load(tmp_path / "eval" / "ad-arrival__nx1-light__dark__ctx16__1__test3_steps120_seed1.npz") as f:
        assert json.loads(str(f["meta"]))["arrival"] is True
    (png,) = [p for p in os.listdir(tmp_path / "eval") if p.endswith(".png")]
    assert png.startswith("ad__nx1-light__dark__ctx16__1__test3_steps120_seed1__and_2_more_")  # a digest of the set
    out = capsys.readouterr().out
    assert "random policy" in out and "source agents (nx1-light, own tasks)" in out and "first 500 steps" in out
    # the printed mean and its interval are the row's; the table's interval is the bootstrap over tasks
    assert f"{rows[0]['first500']:.2f} [{rows[0]['first500_low']:.2f}, {rows[0]['first500_high']:.2f}]" in out
    # seeded: another folder gets the same row; a rerun rewrites the same file
    again = E.main(eval_args(paths[:1], tmp_path / "eval2", source_runs=2))
    assert again[0].pop("out") == str(tmp_path / "eval2" / "ad__nx1-light__dark__ctx16__1__test3_steps120_seed1.npz")
    np.testing.assert_equal(again[0], {k: v for k, v in rows[0].items() if k != "out"})  # NaN equal to NaN
    np.testing.assert_equal(E.main(eval_args(paths[:1], tmp_path / "eval", source_runs=2))[0], rows[0])
    # the validation split: the fixed tasks, whatever the seed
    validation = len(K.task_split(4, "validation"))
    E.main(eval_args(paths[:1], tmp_path / "eval", split="validation", num_envs=validation, steps=60, seed=5))
    name = f"ad__nx1-light__dark__ctx16__1__validation{validation}_steps60_seed5.npz"
    with np.load(tmp_path / "eval" / name) as f:
        np.testing.assert_array_equal(f["tasks"], K.task_split(4, "validation"))


def test_default_out_dir_is_beside_the_checkpoints(data, tmp_path):
    shutil.copytree(data, tmp_path / "data9")
    paths = [ckpt(data, "dark"), ckpt(tmp_path / "data9", "dark")]
    E.main(eval_args(paths, None, steps=60, source_runs=0))
    for folder, path in zip(("data", "data9"), paths, strict=True):
        with np.load(tmp_path / folder / "eval" / "ad__nx1-light__dark__ctx16__1__test3_steps60_seed1.npz") as f:
            assert json.loads(str(f["meta"]))["checkpoint"] == str(path)
    # a checkpoint outside a checkpoints/ folder: its evaluation goes beside it, with no source row
    (tmp_path / "loose").mkdir()
    shutil.copy(ckpt(data, "dark"), tmp_path / "loose" / "m.pt")
    E.main(eval_args([tmp_path / "loose" / "m.pt"], None, steps=60))
    assert (tmp_path / "loose" / "eval" / "m__test3_steps60_seed1.npz").exists()


def test_eval_files_of_different_checkpoints_never_share_a_name(data, tmp_path):
    (tmp_path / "data9" / "checkpoints").mkdir(parents=True)
    first = data / "checkpoints" / "x.pt"
    second = tmp_path / "data9" / "checkpoints" / "x.pt"
    shutil.copy(ckpt(data, "dark"), first)
    shutil.copy(ckpt(data, "seed2"), second)  # another training run (seed 2) under the same file name
    with pytest.raises(ValueError, match="would both write"):  # before any rollout
        E.main(eval_args([first, second], tmp_path / "eval", steps=60))
    assert not (tmp_path / "eval").exists()
    E.main(eval_args([first], tmp_path / "eval", steps=60))
    with pytest.raises(ValueError, match="holds the evaluation of"):
        E.main(eval_args([second], tmp_path / "eval", steps=60))
    # the same training run may be evaluated again after its folder moved; another run with the same
    # file name, given by the same relative path, may not overwrite it
    shutil.move(str(data), str(tmp_path / "moved"))
    E.main(eval_args([tmp_path / "moved" / "checkpoints" / "x.pt"], tmp_path / "eval", steps=60))
    written = (tmp_path / "eval" / "x__test3_steps60_seed1.npz").read_bytes()
    os.chdir(tmp_path / "data9")
    with pytest.raises(ValueError, match="holds the evaluation of"):
        E.main(eval_args(["checkpoints/x.pt"], tmp_path / "eval", steps=60))
    broken = tmp_path / "eval" / "x__test3_steps50_seed1.npz"
    broken.write_bytes(b"")  # an empty file where an evaluation file would go
    with pytest.raises(ValueError, match="not a readable evaluation file"):
        E.main(eval_args([tmp_path / "moved" / "checkpoints" / "x.pt"], tmp_path / "eval", steps=50))
    assert (tmp_path / "eval" / "x__test3_steps60_seed1.npz").read_bytes() == written  # nothing lost


def test_tensorboard_runs_of_other_settings_are_apart(data, tmp_path):
    path = ckpt(data, "dark")
    E.main(eval_args([path], tmp_path / "eval", steps=60, num_envs=2))
    E.main(eval_args([path], tmp_path / "eval", steps=80, num_envs=3))
    run_name = torch.load(path, weights_only=True)["run_name"]
    assert sorted(os.listdir(tmp_path / "runs")) == [
        f"{run_name}__eval_test2_steps60_seed1",
        f"{run_name}__eval_test3_steps80_seed1",
    ]


# ----------------------------------------------------------------------------------------------
# --capture-video: one task's first episodes beside its last, as an animated GIF
# ----------------------------------------------------------------------------------------------
def shows(picture, name):
    """Whether any pixel of an RGB picture has the colour `E.RENDER_COLORS[name]`."""
    return bool((np.asarray(picture) == E.RENDER_COLORS[name]).all(axis=-1).any())


def cell_centre(image, x, y, size):
    scale = image.shape[0] // size
    return tuple(image[(size - 1 - y) * scale + scale // 2, x * scale + scale // 2])


def test_draw_grid_shape_and_cells():
    task = np.array([3, 1, 1, 4])  # key (3, 1), door (1, 4)
    image = E.draw_grid(5, task, np.array([[2, 2]]), has_key=True, door_found=True, scale=10)
    assert image.shape == (50, 50, 3) and image.dtype == np.uint8
    assert cell_centre(image, 3, 1, 5) == E.RENDER_COLORS["key"]
    assert cell_centre(image, 1, 4, 5) == E.RENDER_COLORS["door"]
    assert tuple(image[2 * 10 + 2, 2 * 10 + 5]) == E.RENDER_COLORS["agent"]  # the agent, off the key on it
    assert cell_centre(image, 2, 2, 5) == E.RENDER_COLORS["key"]  # the key it holds, at the centre of the agent
    assert cell_centre(image, 4, 0, 5) == E.RENDER_COLORS["floor"]
    assert tuple(image[0, 0]) == E.RENDER_COLORS["wall"] and tuple(image[-1, 25]) == E.RENDER_COLORS["wall"]
    # y grows upwards: the door's row y = 4 is the image's top row of cells
    assert cell_centre(image, 1, 4, 5) == tuple(image[5, 15])
    assert E.draw_grid(9, task, np.array([[0, 0]]), scale=24).shape == (216, 216, 3)


def test_draw_grid_hides_what_was_not_found():
    task = np.array([3, 1, 1, 4])
    start = np.array([[0, 0]])
    hidden = E.draw_grid(5, task, start, scale=12)
    assert not shows(hidden, "key") and not shows(hidden, "door")
    assert cell_centre(hidden, 3, 1, 5) == E.RENDER_COLORS["floor"]
    assert cell_centre(hidden, 0, 0, 5) == E.RENDER_COLORS["agent"]
    door_only = E.draw_grid(5, task, start, door_found=True, scale=12)
    assert shows(door_only, "door") and not shows(door_only, "key")
    carrying = E.draw_grid(5, task, start, has_key=True, scale=12)
    assert cell_centre(carrying, 0, 0, 5) == E.RENDER_COLORS["key"]  # the key on the agent
    assert cell_centre(carrying, 3, 1, 5) == E.RENDER_COLORS["key"] and not shows(carrying, "door")  # and its cell


def test_draw_grid_path():
    path = np.array([(0, 0), (1, 0), (1, 1), (0, 0), (0, 1)])  # three moves, a jump back to the start, a move
    image = E.draw_grid(4, np.array([3, 3, 2, 3]), path, scale=16)
    for x, y in path:
        corner = image[(3 - y) * 16 + 3, x * 16 + 3]  # away from the centre lines
        assert tuple(corner) == E.RENDER_COLORS["path"]
    assert cell_centre(image, 2, 2, 4) == E.RENDER_COLORS["floor"]
    assert cell_centre(image, 0, 1, 4) == E.RENDER_COLORS["agent"]  # the path's last cell
    # a move joins two centres; the jump from (1, 1) to (0, 0) is no line across the diagonal
    assert tuple(image[(3 - 0) * 16 + 8, 16]) == E.RENDER_COLORS["trail"]  # between (0, 0) and (1, 0)
    assert tuple(image[(3 - 1) * 16 + 2, 2 * 8]) != E.RENDER_COLORS["trail"]


def test_key_and_door_are_drawn_once_found():
    """Key (3, 0), door (1, 0): the agent walks onto the door without the key (nothing happens), to the key, then
    back to the door, which it opens."""
    cells = np.array([[1, 0], [2, 0], [3, 0], [2, 0], [1, 0]])
    pictures, returns = E.episode_pictures(4, np.array([3, 0, 1, 0]), cells, scale=16)
    assert len(pictures) == len(cells) + 1  # the start cell, then one per step
    assert returns == [0, 0, 0, 1, 1, 2]
    assert [shows(picture, "key") for picture in pictures] == [False, False, False, True, True, True]
    assert [shows(picture, "door") for picture in pictures] == [False] * 5 + [True]
    assert all(shows(picture, "agent") for picture in pictures)


def test_capture_video(data, tmp_path, capsys):
    """The GIF of env 2: the first 3 whole episodes beside the last 3, a frame per step and per episode start; at
    its end each panel shows the key iff its last episode earned the key's reward, the door iff it opened it."""
    from PIL import Image

    steps = 320  # at least 6 whole episodes of 50 steps or fewer end before the last step
    E.main(
        eval_args([ckpt(data, "dark")], tmp_path / "eval", steps=steps, source_runs=0, capture_video=True, video_env=2)
    )
    stem = tmp_path / "eval" / f"ad__nx1-light__dark__ctx16__1__test3_steps{steps}_seed1"
    gif = f"{stem}__video_env2.gif"
    assert f"video: {gif}" in capsys.readouterr().out
    with np.load(f"{stem}.npz") as f:
        mine = (f["episode_env"] == 2) & (f["episode_end_step"] < steps)  # the last step's arrival is unrecorded
        ends = f["episode_end_step"][mine]
        returns = f["episode_return"][mine]
    assert len(ends) >= 6
    frames_per_episode = np.diff(ends, prepend=0) + 1
    expected = max(frames_per_episode[:3].sum(), frames_per_episode[-3:].sum())
    with Image.open(gif) as video:
        assert video.format == "GIF" and video.n_frames == expected and video.info["loop"] == 0
        first = np.asarray(video.convert("RGB"))
        durations = []
        for index in range(video.n_frames):
            video.seek(index)
            durations.append(video.info["duration"])
        last = np.asarray(video.convert("RGB"))
    # a frame where an episode ends in either panel pauses; the last frame is held before the GIF loops
    episode_ends = {*(np.cumsum(frames_per_episode[:3]) - 1), *(np.cumsum(frames_per_episode[-3:]) - 1)}
    for index, duration in enumerate(durations[:-1]):
        assert duration == (E.VIDEO_END_MS if index in episode_ends else 1000 // E.VIDEO_FPS // 10 * 10)  # in 1/100 s
    assert durations[-1] == E.VIDEO_HOLD_MS
    # the first frame: both agents on their start cell, neither key nor door found yet
    assert shows(first, "agent") and not shows(first, "key") and not shows(first, "door")
    half = first.shape[1] // 2
    for panel, episode_return in ((last[:, :half], returns[2]), (last[:, half:], returns[-1])):
        assert shows(panel, "key") == (episode_return >= 1) and shows(panel, "door") == (episode_return == 2)


def test_capture_video_bad_input(data, tmp_path):
    path = ckpt(data, "dark")
    for video_env in (-1, 3):  # 3 envs: 0..2
        with pytest.raises(
            ValueError, match=f"--video-env must be one of the --num-envs 3 envs, 0..2, got {video_env}"
        ):
            E.main(eval_args([path], tmp_path / "eval", capture_video=True, video_env=video_env))
    with pytest.raises(ValueError, match="--capture-video needs --steps > 100"):
        E.main(eval_args([path], tmp_path / "eval", capture_video=True, steps=100))
    assert not (tmp_path / "eval").exists()


# ----------------------------------------------------------------------------------------------
# Bad input: one clear error before any work
# ----------------------------------------------------------------------------------------------
def test_more_envs_than_the_split_holds_evaluates_all_of_its_tasks(data, tmp_path, capsys):
    """Issue 32: the default --num-envs 100 on a small grid takes every held-out task instead of refusing."""
    test_tasks = len(K.task_split(4, "test"))
    (result,) = E.main(eval_args([ckpt(data, "dark")], tmp_path / "eval", num_envs=test_tasks + 1, source_runs=0))
    assert f"the test split holds {test_tasks} tasks; evaluating all of them" in capsys.readouterr().out
    with np.load(result["out"], allow_pickle=False) as saved:
        assert np.array_equal(saved["tasks"], K.eval_tasks(4, "test", test_tasks, 1))
    assert f"test{test_tasks}_steps" in result["out"]


def test_an_output_that_is_no_regular_file_is_refused_and_a_missing_source_is_named(data, tmp_path, capsys):
    """Issue 32: a FIFO named like the evaluation file would block its read (a hang), and an evaluation file name too
    long for the file system failed after the rollout: both refused before any rollout; a missing source dataset
    says why the table has no source row."""
    path = ckpt(data, "dark")
    out = tmp_path / "eval"
    out.mkdir()
    name = f"{os.path.splitext(os.path.basename(path))[0]}__test3_steps120_seed1.npz"
    os.mkfifo(out / name)
    with pytest.raises(OSError, match=f"{name}: cannot write there \\(it exists and is not a regular file\\)"):
        E.main(eval_args([path], out))
    long_name = tmp_path / ("m" * 220 + ".pt")  # fits; its evaluation file's name (+ 26 characters) does not
    shutil.copy(path, long_name)
    with pytest.raises(OSError, match=r"cannot write there \(File name too long\)"):
        E.main(eval_args([long_name], tmp_path / "eval3"))
    assert os.listdir(tmp_path / "eval3") == []
    moved = tmp_path / "elsewhere" / "checkpoints"
    moved.mkdir(parents=True)
    shutil.copy(path, moved)
    E.main(eval_args([moved / os.path.basename(path)], tmp_path / "eval2"))
    assert f"no source row: {tmp_path / 'elsewhere' / 'nx1-light'} does not exist" in capsys.readouterr().out


def test_a_fifo_named_like_a_checkpoint_is_refused_not_waited_on(tmp_path):
    """Issue 32: torch.load opened a FIFO and waited for a writer (a hang). Checkpoints are opened without waiting:
    a FIFO reads empty and is refused in one line, by ad_eval.py (ad_train's reader) and rl2_train.py's."""
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "ad_eval.py"), "--checkpoints", str(fifo)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert f"{fifo}: not a readable checkpoint" in result.stderr
    with pytest.raises(ValueError, match=f"{fifo}: not a readable checkpoint"):
        R.load_checkpoint(str(fifo), R.Args(), None, None)


SHIPPED = os.path.join(ROOT, "models", "ad-k8-arrival__nx1-light__dark__ctx250__1.pt")


def test_the_shipped_model_loads_with_this_code_and_learns_in_context(tmp_path):
    """Issue 32: the README's first command evaluates the shipped 7x7 model; a change of the checkpoint format or
    the model must not strand it. It loads strictly, is small, and on 8 test tasks x 1,500 steps its returns rise."""
    assert os.path.getsize(SHIPPED) < 1_000_000
    checkpoint = A.load_checkpoint(SHIPPED)
    assert checkpoint["data"]["size"] == 7 and checkpoint["model_config"]["context"] == 250
    (row,) = E.main(
        E.Args(checkpoints=(SHIPPED,), num_envs=8, steps=1500, out_dir=str(tmp_path), progress=False, cuda=False)
    )
    assert row["last500"] > row["first500"] + 0.3 and row["last500"] > 1.2


def test_bad_input(data, tmp_path, corrupt_deflate_stream):
    with pytest.raises(FileNotFoundError):
        E.main(eval_args([tmp_path / "missing.pt"], tmp_path / "eval"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        E.main(eval_args([tmp_path / "junk.pt"], tmp_path / "eval"))
    torch.save({"model": {}, "update": 3}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="not a checkpoint of"):
        E.main(eval_args([tmp_path / "old.pt"], tmp_path / "eval"))
    path = ckpt(data, "dark")
    test_tasks = len(K.task_split(4, "test"))
    with pytest.raises(ValueError, match="--video-env must be one of"):  # checked against the tasks it will run
        E.main(eval_args([path], tmp_path / "eval", num_envs=test_tasks + 5, capture_video=True, video_env=test_tasks))
    for flag, value in (("steps", 49), ("num_envs", 0), ("curve_bin", 0), ("source_runs", -1), ("window_keep", -1)):
        with pytest.raises(ValueError, match=f"--{flag.replace('_', '-')} must be >= "):
            E.main(eval_args([path], tmp_path / "eval", **{flag: value}))
    with pytest.raises(ValueError, match="--checkpoints needs"):
        E.main(eval_args([], tmp_path / "eval"))
    for value in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="--temperature must be a finite number > 0"):
            E.main(eval_args([path], tmp_path / "eval", temperature=value))
    with pytest.raises(ValueError, match="--temperature has no effect with --greedy"):
        E.main(eval_args([path], tmp_path / "eval", temperature=0.5, greedy=True))
    context = torch.load(path, weights_only=True)["model_config"]["context"]
    with pytest.raises(ValueError, match=f"--window-keep {context + 1} is more than the context {context} of "):
        E.main(eval_args([path], tmp_path / "eval", window_keep=context + 1))
    # a corrupt source history is reported before any rollout, and nothing is written
    source = data / "nx1-light" / "run_00000.npz"
    good = source.read_bytes()
    source.write_bytes(b"truncated")
    with pytest.raises(ValueError, match="run_00000.npz: not a readable"):
        E.main(eval_args([path], None))
    assert not (data / "eval").exists()
    source.write_bytes(good)
    corrupt_deflate_stream(source)  # a damaged compressed stream, read at load
    with pytest.raises(ValueError, match=r"run_00000\.npz: not a readable .*zlib\.error") as error:
        E.main(eval_args([path], None))
    assert "\n" not in str(error.value) and not (data / "eval").exists()
    # a source run of another grid than the checkpoint's is refused before any rollout
    history = {
        "observations": np.zeros((60, 4), np.float32),
        "actions": np.zeros(60, np.int64),
        "rewards": np.zeros(60, np.float32),
        "terminations": np.zeros(60, bool),
        "truncations": np.arange(60) % 50 == 49,
        "tasks": np.tile([1, 1, 2, 2], (60, 1)),
    }
    os.remove(source)
    K.save_history(str(source), history, {"size": 5})
    with pytest.raises(ValueError, match="run_00000.npz is a 5x5 run, the checkpoint was trained on 4x4"):
        E.main(eval_args([path], None))
    assert not (data / "eval").exists()
    source.write_bytes(good)
    # TensorBoard's runs/ that cannot be written is reported before any rollout too
    (tmp_path / "runs").write_bytes(b"")
    with pytest.raises(OSError, match="runs/: cannot write there"):
        E.main(eval_args([path], tmp_path / "eval"))
    assert not (tmp_path / "eval").exists()
    os.remove(tmp_path / "runs")
    # an output folder that cannot be written is reported before any rollout
    (tmp_path / "a_file").write_bytes(b"")
    with pytest.raises(OSError, match="cannot write"):
        E.main(eval_args([path], tmp_path / "a_file" / "eval"))


def claim_size_100(checkpoint):
    checkpoint["data"]["size"] = 100  # a task split of 100M tasks


def drop_the_version(checkpoint):
    del checkpoint["version"]


def cut_the_weights(checkpoint):
    for name, tensor in list(checkpoint["model"].items()):
        if tensor.dim() == 2:
            checkpoint["model"][name] = tensor[:1]


def add_a_model_field(checkpoint):
    checkpoint["model_config"]["unknown"] = 1


@pytest.mark.parametrize(
    "change, message",
    [
        (drop_the_version, r"bad\.pt: .*version"),
        (cut_the_weights, r"bad\.pt: .*size mismatch"),  # PyTorch's strict load
        (add_a_model_field, r"bad\.pt: .*unknown"),
        (claim_size_100, "grid size 100 is larger than"),  # the env's own refusal, before its task split is built
    ],
)
def test_every_checkpoint_is_checked_before_the_first_is_evaluated(data, tmp_path, monkeypatch, change, message):
    """A bad second checkpoint is one line (PyTorch's error, naming the file), and writes nothing, not even the good
    first one's file; no rollout starts."""

    def no_rollout(*args, **kwargs):
        raise AssertionError("a rollout started before every checkpoint was checked")

    monkeypatch.setattr(E, "rollout", no_rollout)
    bad = tmp_path / "bad.pt"
    shutil.copy(ckpt(data, "seed2"), bad)
    rewrite(bad, change)
    with pytest.raises(ValueError, match=message) as error:
        E.main(eval_args([ckpt(data, "dark"), bad], tmp_path / "eval"))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "eval").exists() and not (tmp_path / "runs").exists()


def test_out_of_memory_is_one_line_naming_the_flags_to_lower(data, tmp_path, monkeypatch):
    """PyTorch's own out-of-memory error, on the host (the CPU allocator's) or on a GPU, ends in one line that names
    --steps and --num-envs; nothing is written for that checkpoint. Any other error of the rollout is left as it is."""
    path = ckpt(data, "dark")
    out = tmp_path / "eval" / f"{path.stem}__test3_steps100000000000000_seed1.npz"
    with pytest.raises(
        ValueError,
        match="out of memory on cpu for --steps 100,000,000,000,000 x --num-envs 3; lower --steps or --num-envs",
    ) as error:
        E.main(eval_args([path], tmp_path / "eval", steps=10**14))  # petabytes of tokens: more than any address space
    assert "\n" not in str(error.value) and not out.exists()

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB.\nSee the documentation")

    monkeypatch.setattr(E, "rollout", no_memory)
    with pytest.raises(ValueError, match="lower --steps or --num-envs") as error:
        E.main(eval_args([path], tmp_path / "eval"))
    assert "\n" not in str(error.value)

    def other_error(*args, **kwargs):
        raise RuntimeError("something else")

    monkeypatch.setattr(E, "rollout", other_error)
    with pytest.raises(RuntimeError, match="something else"):
        E.main(eval_args([path], tmp_path / "eval"))


def test_an_rl2_checkpoint_is_named_as_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flags = dict(size=4, iterations=1, num_envs=2, num_minibatches=1, episodes_per_trial=2, save_every=1)
    flags.update(eval_every=0, eval_envs=1, n_layer=1, n_embd=16, n_head=2, d_ff=16, progress=False, cuda=False)
    checkpoint = R.main(R.Args(data_dir=str(tmp_path / "data"), **flags))["checkpoint"]
    with pytest.raises(ValueError, match="rl2_train.py") as error:
        E.main(eval_args([checkpoint], tmp_path / "eval"))
    assert checkpoint in str(error.value)


def test_cli_error_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "ad_eval.py"), "--checkpoints", "nope.pt"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "nope.pt" in result.stderr


def test_figure_shows_ad_random_and_the_source_on_one_axis():
    """--plot's panel: AD's binned mean with its interval band, the random policy and the source agents' own curve on
    the same axis, and the legend outside the data."""
    import matplotlib.pyplot as plt

    def episodes(returns_per_env, length):
        env = np.repeat(np.arange(len(returns_per_env)), [len(r) for r in returns_per_env])
        end_step = np.concatenate([np.arange(1, len(r) + 1) * length for r in returns_per_env])
        return {"env": env, "return": np.concatenate(returns_per_env).astype(np.float32), "end_step": end_step}

    rising = episodes([np.linspace(0, 2, 40), np.linspace(0.5, 2, 40)], 25)  # 2 envs x 1,000 steps
    flat = episodes([np.full(40, 0.5), np.full(40, 0.5)], 25)
    source = {**episodes([np.linspace(0, 2, 20)] * 3, 25), "num_envs": 3}  # 3 runs x 500 steps
    result = {"episodes": rising, "random": flat, "source": source, "steps": 1000, "num_envs": 2, "title": "t"}
    fig = E.figure([result])
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"AD in context, 95% interval", "source agents (own tasks)", "random policy"}
    ad = lines["AD in context, 95% interval"].get_ydata()
    assert ad[-1] > ad[0] + 1  # the binned mean rises as the episodes do
    assert lines["source agents (own tasks)"].get_xdata().max() == 500  # the source curve spans its own steps
    np.testing.assert_allclose(lines["random policy"].get_ydata(), 0.5)
    assert len(ax.collections) == 1  # AD's interval band
    assert ax.get_legend() is None and len(fig.legends) == 1  # the legend sits under the panel, off the data
    plt.close(fig)
