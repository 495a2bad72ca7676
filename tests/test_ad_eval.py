"""ad_eval.py: KV cache against full recompute, the protocol, outputs and bad input."""

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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG = {
    "sampler": torch.Generator().get_state(),
    "torch": torch.get_rng_state(),
    "cuda": torch.empty(0, dtype=torch.uint8),
}


def write_checkpoint(path, obs_dim=4, context=16, size=5, dataset="nx1-light", arrival=False, run_name="test"):
    torch.manual_seed(0)
    config = A.ModelConfig(
        obs_dim=obs_dim, context=context, n_layer=2, n_head=2, n_embd=16, d_ff=32, dropout=0.0, arrival=arrival
    )
    model = A.DecisionModel(config)
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": model.optimizer(1e-3, 0.1, torch.device("cpu")).state_dict(),
        "iteration": 1,
        "args": {"exp_name": "ad"},
        "model_config": A.asdict(config),
        "run_name": run_name,
        "rng": RNG,
        "data": {"dataset": dataset, "size": size, "light_obs": obs_dim == 8, "obs_dim": obs_dim},
    }
    K.atomic_write(str(path), lambda f: torch.save(checkpoint, f))
    return model.eval()


def eval_args(checkpoints, tmp_path, **overrides):
    flags = dict(
        checkpoints=tuple(str(c) for c in checkpoints),
        num_envs=3,
        steps=120,
        out_dir=str(tmp_path / "eval"),
        progress=False,
        cuda=False,
    )
    flags.update(overrides)
    return E.Args(**flags)


def test_window_starts():
    starts = A.window_starts(40, 10)
    assert starts[:10].tolist() == [0] * 10
    assert starts[10] == 6  # the 11th token refills the cache with the last 5 tokens
    lengths = np.arange(40) - starts + 1
    assert lengths.min() >= 1 and lengths.max() == 10 and (lengths[10:] >= 5).all()


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
        fast, slow = (
            A.rollout(model, tasks, 150, 5, 3, torch.device("cpu"), greedy=greedy, full_recompute=full)
            for full in (False, True)
        )
        for key in ("env", "return", "end_step"):
            np.testing.assert_array_equal(fast["episodes"][key], slow["episodes"][key])
        for key in fast["tokens"]:
            torch.testing.assert_close(fast["tokens"][key], slow["tokens"][key], rtol=0, atol=0)
    assert not model.training


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
        obs, _ = env.reset(seed=0)
        hist = {k: [] for k in K.HISTORY_DTYPES}
        for a in actions:
            hist["observations"].append(obs), hist["tasks"].append(env.task)
            obs, r, term, trunc, _ = env.step(int(a))
            hist["actions"].append(a), hist["rewards"].append(r), hist["terminations"].append(term)
            hist["truncations"].append(trunc)
            if term or trunc:
                obs, _ = env.reset()
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


def test_per_env_metrics_weight_envs_equally():
    episodes = {
        "env": np.array([0] * 10 + [1] * 2),
        "return": np.array([2.0] * 10 + [0.0] * 2),
        "end_step": np.concatenate([np.arange(1, 11) * 10, [50, 100]]),
    }
    row = E.summary_row("x", episodes, 2)
    assert row["first500"] == pytest.approx(1.0)  # not 10/6 as a mean over episodes would say
    assert row["reached"] == 1 and row["median_steps_to_1.8"] == np.inf  # the median env never got there
    assert E.per_env_metrics(episodes, 2)["steps_to_1.8"].tolist() == [100, np.inf]


def test_confidence_interval_is_students_t():
    values = np.array([0.0, 1.0] * 10)  # 20 envs, sd 0.513
    mean, half = E.mean_and_interval(values)
    assert mean == 0.5 and half == pytest.approx(2.093 * values.std(ddof=1) / np.sqrt(20), rel=1e-3)
    assert np.isnan(E.mean_and_interval(np.array([1.0]))[1])
    assert E.mean_and_interval(np.array([1.0, np.nan, 3.0]))[0] == 2.0  # envs with no episode left out


def test_binned_curve_weights_envs_equally():
    episodes = {
        "env": np.array([0, 0, 0, 1]),
        "return": np.array([2.0, 2.0, 2.0, 0.0]),
        "end_step": np.array([10, 20, 60, 50]),
    }
    steps, values = E.binned_curve(episodes, 2, 120, 50)
    assert steps.tolist() == [50, 100] and values.tolist() == [1.0, 2.0]
    late = dict(episodes, end_step=np.array([10, 20, 110, 50]))
    assert E.binned_curve(late, 2, 120, 50)[0].tolist() == [50, 120]  # the last bin ends at the last step


def test_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "data" / "checkpoints" / "m.pt"
    write_checkpoint(ckpt)
    light = tmp_path / "data" / "checkpoints" / "light.pt"
    write_checkpoint(light, obs_dim=8)
    arrival = tmp_path / "data" / "checkpoints" / "arrival.pt"
    write_checkpoint(arrival, arrival=True)
    rows = E.main(eval_args([ckpt, light, arrival], tmp_path, plot=True))
    assert len(rows) == 3 and all(row["envs"] == 3 for row in rows)
    with np.load(tmp_path / "eval" / "m__test3_steps120_seed1.npz", allow_pickle=False) as data:
        tasks, meta = data["tasks"], json.loads(str(data["meta"]))
        assert len(data["episode_return"]) == len(data["episode_env"]) == len(data["episode_end_step"]) > 0
        assert data["episode_end_step"].max() <= 120
        random_episodes = {k: data[f"random_episode_{k}"] for k in ("env", "return", "end_step")}
    test = {tuple(t) for t in K.task_split(5, "test")}
    assert tasks.shape == (3, 4) and {tuple(t) for t in tasks} <= test  # test tasks only
    assert meta["split"] == "test" and meta["context"] == 16 and meta["algorithm"] == "ad"
    assert meta["model_config"]["n_embd"] == 16 and meta["checkpoint"] == str(ckpt)
    assert meta["exp_name"] == "ad" and meta["dataset"] == "nx1-light" and meta["iteration"] == 1
    for key, value in E.random_rollout(tasks, 120, 5, 1).items():
        np.testing.assert_array_equal(random_episodes[key], value)
    (png,) = [p for p in os.listdir(tmp_path / "eval") if p.endswith(".png")]
    assert png.startswith("m__test3_steps120_seed1__and_2_more_")  # a digest of the set of checkpoints
    out = capsys.readouterr().out
    assert "random policy" in out and "first 500 steps (95% CI)" in out and "source agents" not in out
    again = E.main(eval_args([ckpt], tmp_path, out_dir=str(tmp_path / "eval2")))
    assert again[0].pop("out") == str(tmp_path / "eval2" / "m__test3_steps120_seed1.npz")
    assert again[0] == {k: v for k, v in rows[0].items() if k != "out"}  # seeded
    assert E.main(eval_args([ckpt], tmp_path))[0] == rows[0]  # rerun: the same file, rewritten
    # a checkpoint outside a checkpoints/ folder: its evaluation goes beside it, with no source row
    loose = tmp_path / "loose" / "m.pt"
    write_checkpoint(loose)
    E.main(eval_args([loose], tmp_path, out_dir=None, steps=60))
    assert (tmp_path / "loose" / "eval" / "m__test3_steps60_seed1.npz").exists()
    # the validation split: the fixed 20 tasks, whatever the seed
    E.main(eval_args([ckpt], tmp_path, split="validation", num_envs=20, steps=60, seed=5))
    with np.load(tmp_path / "eval" / "m__validation20_steps60_seed5.npz", allow_pickle=False) as data:
        np.testing.assert_array_equal(data["tasks"], K.task_split(5, "validation"))


def test_default_out_dir_is_beside_the_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for folder in ("data", "data9"):
        write_checkpoint(tmp_path / folder / "checkpoints" / "x.pt")
    E.main(
        eval_args(
            [tmp_path / "data" / "checkpoints" / "x.pt", tmp_path / "data9" / "checkpoints" / "x.pt"],
            tmp_path,
            out_dir=None,
        )
    )
    for folder in ("data", "data9"):
        with np.load(tmp_path / folder / "eval" / "x__test3_steps120_seed1.npz", allow_pickle=False) as data:
            assert json.loads(str(data["meta"]))["checkpoint"] == str(tmp_path / folder / "checkpoints" / "x.pt")


def test_eval_files_of_different_checkpoints_never_share_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = tmp_path / "data" / "checkpoints" / "x.pt", tmp_path / "data9" / "checkpoints" / "x.pt"
    write_checkpoint(first, run_name="KeyDoor-Dark-5x5__ad__1__1700000000")
    write_checkpoint(second, context=20, run_name="KeyDoor-Dark-5x5__ad__1__1700000099")
    with pytest.raises(ValueError, match="would both write"):  # before any rollout
        E.main(eval_args([first, second], tmp_path))
    assert not (tmp_path / "eval").exists()
    E.main(eval_args([first], tmp_path))
    written = (tmp_path / "eval" / "x__test3_steps120_seed1.npz").read_bytes()
    with pytest.raises(ValueError, match="holds the evaluation of"):
        E.main(eval_args([second], tmp_path))
    # the same training run may be evaluated again after its folder moved; another run with the same
    # file name, given by the same relative path, may not overwrite it
    shutil.move(str(tmp_path / "data"), str(tmp_path / "moved"))
    E.main(eval_args([tmp_path / "moved" / "checkpoints" / "x.pt"], tmp_path))
    written = (tmp_path / "eval" / "x__test3_steps120_seed1.npz").read_bytes()
    os.chdir(tmp_path / "data9")
    with pytest.raises(ValueError, match="holds the evaluation of"):
        E.main(eval_args(["checkpoints/x.pt"], tmp_path))
    broken = tmp_path / "eval" / "x__test3_steps60_seed1.npz"
    broken.write_bytes(b"")  # an empty file where an evaluation file would go
    with pytest.raises(ValueError, match="not a readable evaluation file"):
        E.main(eval_args([tmp_path / "moved" / "checkpoints" / "x.pt"], tmp_path, steps=60))
    assert (tmp_path / "eval" / "x__test3_steps120_seed1.npz").read_bytes() == written  # nothing lost


def test_bad_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError):
        E.main(eval_args([tmp_path / "missing.pt"], tmp_path))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        E.main(eval_args([tmp_path / "junk.pt"], tmp_path))
    torch.save({"model": {}, "update": 3}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="not a checkpoint of this version"):
        E.main(eval_args([tmp_path / "old.pt"], tmp_path))
    ckpt = tmp_path / "data" / "checkpoints" / "m.pt"
    write_checkpoint(ckpt, size=4)
    test_tasks = len(K.task_split(4, "test"))
    with pytest.raises(ValueError, match=f"holds {test_tasks} tasks"):
        E.main(eval_args([ckpt], tmp_path, num_envs=test_tasks + 1))
    with pytest.raises(ValueError, match=">= 1"):
        E.main(eval_args([ckpt], tmp_path, steps=0))
    # a corrupt source history is reported before any rollout, and nothing is written
    source = tmp_path / "data" / "nx1-light"
    source.mkdir(parents=True)
    (source / "run_00000.npz").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="run_00000.npz: not a readable"):
        E.main(eval_args([ckpt], tmp_path))
    assert not (tmp_path / "eval").exists()
    # a source run of another grid than the checkpoint's is refused before any rollout
    history = {
        "observations": np.zeros((60, 4), np.float32),
        "actions": np.zeros(60, np.int64),
        "rewards": np.zeros(60, np.float32),
        "terminations": np.zeros(60, bool),
        "truncations": np.arange(60) % 50 == 49,
        "tasks": np.tile([1, 1, 2, 2], (60, 1)),
    }
    K.save_history(str(source / "run_00000.npz"), history, {"size": 5})
    with pytest.raises(ValueError, match="run_00000.npz is a 5x5 run, the checkpoint was trained on 4x4"):
        E.main(eval_args([ckpt], tmp_path))
    assert not (tmp_path / "eval").exists()
    # TensorBoard's runs/ that cannot be written is reported before any rollout too
    (tmp_path / "runs").write_bytes(b"")
    with pytest.raises(OSError, match="runs: cannot write there"):
        E.main(eval_args([ckpt], tmp_path, source_runs=0))
    assert not (tmp_path / "eval").exists()
    os.remove(tmp_path / "runs")
    # an output folder that cannot be written is reported before any rollout
    (tmp_path / "a_file").write_bytes(b"")
    with pytest.raises(OSError, match="cannot write"):
        E.main(eval_args([ckpt], tmp_path, source_runs=0, out_dir=str(tmp_path / "a_file" / "eval")))


def test_stale_parts_are_removed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "m.pt"
    write_checkpoint(ckpt)
    (tmp_path / "eval").mkdir()
    stale = tmp_path / "eval" / ".tmp-otherhost-1-x.part"
    stale.write_bytes(b"partial")
    os.utime(stale, (0, 0))
    E.main(eval_args([ckpt], tmp_path, steps=60))
    assert not stale.exists()


def test_cli_error_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "ad_eval.py"), "--checkpoints", "nope.pt"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "nope.pt" in result.stderr
