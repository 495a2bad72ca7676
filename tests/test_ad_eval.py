"""ad_eval.py: KV cache against full recompute, the protocol, outputs and bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import ad_eval as E
import ad_train as A
import keydoor_env as K

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_checkpoint(path, obs_dim=4, context=16, size=5, dataset="nx1-light", arrival=False):
    torch.manual_seed(0)
    config = A.ModelConfig(obs_dim=obs_dim, context=context, n_layer=2, n_head=2, n_embd=16, d_ff=32, dropout=0.0,
                           arrival=arrival)
    model = A.DecisionModel(config)
    checkpoint = {"model": model.state_dict(), "optimizer": model.optimizer(1e-3, 0.1, torch.device("cpu")).state_dict(),
                  "update": 1, "args": {}, "model_config": A.asdict(config), "run_name": "test",
                  "data": {"dataset": dataset, "size": size, "light_obs": obs_dim == 8, "obs_dim": obs_dim}}
    K.atomic_write(str(path), lambda f: torch.save(checkpoint, f))
    return model.eval()


def eval_args(checkpoints, tmp_path, **overrides):
    flags = dict(checkpoints=tuple(str(c) for c in checkpoints), num_envs=3, steps=120, out_dir=str(tmp_path / "eval"),
                 progress=False, cuda=False)
    flags.update(overrides)
    return E.Args(**flags)


def test_window_starts():
    starts = E.window_starts(40, 10)
    assert starts[:10].tolist() == [0] * 10
    assert starts[10] == 6  # the 11th token refills the cache with the last 5 tokens
    lengths = np.arange(40) - starts + 1
    assert lengths.min() >= 1 and lengths.max() == 10 and (lengths[10:] >= 5).all()


@pytest.mark.parametrize("arrival", [False, True])
def test_kv_cache_gives_the_same_logits_as_full_recompute(arrival):
    torch.manual_seed(0)
    model = A.DecisionModel(A.ModelConfig(obs_dim=4, context=10, n_layer=2, n_head=2, n_embd=16, d_ff=32,
                                          arrival=arrival)).eval()
    steps, N = 45, 3
    history = E.HistoryBuffer(N, steps, 4, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    history.observations.copy_(torch.rand((N, steps, 4), generator=g))
    history.prev_actions.copy_(torch.randint(0, 5, (N, steps), generator=g))
    history.prev_rewards.copy_(torch.randint(0, 2, (N, steps), generator=g).float())
    history.prev_dones.copy_(torch.randint(0, 2, (N, steps), generator=g).float())
    history.prev_arrivals.copy_(torch.rand((N, steps, 2), generator=g))
    fast, slow = E.Policy(model, history, steps, False), E.Policy(model, history, steps, True)
    for t in range(steps):
        torch.testing.assert_close(fast.logits(t), slow.logits(t), rtol=1e-5, atol=1e-5)


def test_rollouts_agree_and_are_seeded():
    model = A.DecisionModel(A.ModelConfig(obs_dim=4, context=12, n_layer=1, n_head=2, n_embd=16, d_ff=16)).eval()
    tasks = K.task_split(5)[1][:3]
    runs = [E.rollout(model, tasks, 150, 5, seed=3, greedy=True, full_recompute=full, device=torch.device("cpu"))
            for full in (False, True, False)]
    for key in ("env", "return", "end_step"):
        np.testing.assert_array_equal(runs[0][key], runs[1][key])
        np.testing.assert_array_equal(runs[0][key], runs[2][key])
    sampled = [E.rollout(model, tasks, 150, 5, seed=s, greedy=False, full_recompute=False, device=torch.device("cpu"))
               for s in (3, 3)]
    np.testing.assert_array_equal(sampled[0]["return"], sampled[1]["return"])


@pytest.mark.parametrize("arrival", [False, True])
def test_rollout_tokens_match_training_tokens(arrival):
    """The tokens fed at evaluation are exactly those ad_train builds from the same trajectory's file."""
    model = A.DecisionModel(A.ModelConfig(obs_dim=8, context=30, n_layer=1, n_head=2, n_embd=16, d_ff=16,
                                          arrival=arrival)).eval()
    tasks = K.task_split(4)[1][:2]
    steps = 160
    result = E.rollout(model, tasks, steps, 4, seed=0, greedy=False, full_recompute=False, device=torch.device("cpu"))
    fed = result["history"]
    for i in range(2):  # rebuild env i's trajectory as a history file would hold it
        actions = np.append(fed.prev_actions[i, 1:].numpy(), 0)[: steps - 1]
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
        run = A.select_steps(hist, 0, 1)
        n = steps - 1
        np.testing.assert_allclose(fed.prev_arrivals[i, :n].numpy() * 3, run["prev_arrivals"], atol=1e-6)
        np.testing.assert_array_equal(fed.observations[i, :n].numpy(), run["observations"])
        np.testing.assert_array_equal(fed.prev_actions[i, :n].numpy(), run["prev_actions"])
        np.testing.assert_array_equal(fed.prev_rewards[i, :n].numpy(), run["prev_rewards"])
        np.testing.assert_array_equal(fed.prev_dones[i, :n].numpy(), run["prev_dones"])
    assert fed.prev_dones[:, 1:].sum() >= 2  # episode boundaries were crossed


def test_per_env_metrics_weight_envs_equally():
    episodes = {"env": np.array([0] * 10 + [1] * 2), "return": np.array([2.0] * 10 + [0.0] * 2),
                "end_step": np.concatenate([np.arange(1, 11) * 10, [50, 100]])}
    row = E.summary_row("x", episodes, 2)
    assert row["first500"] == pytest.approx(1.0)  # not 10/6 as a mean over episodes would say
    assert row["reached"] == 1 and row["median_steps_to_1.8"] == np.inf  # the median env never got there
    assert E.per_env_metrics(episodes, 2)["steps_to_1.8"].tolist() == [100, np.inf]


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
    with np.load(tmp_path / "eval" / "m__envs3_steps120_seed1.npz", allow_pickle=False) as data:
        tasks, config = data["tasks"], json.loads(str(data["config"]))
        assert len(data["episode_return"]) == len(data["episode_env"]) == len(data["episode_end_step"]) > 0
        assert data["episode_end_step"].max() <= 120
    test = {tuple(t) for t in K.task_split(5)[1]}
    assert tasks.shape == (3, 4) and {tuple(t) for t in tasks} <= test  # held-out tasks only
    assert config["split"] == "test" and config["context"] == 16
    assert (tmp_path / "eval" / "m__light__arrival__envs3_steps120_seed1.png").exists()
    out = capsys.readouterr().out
    assert "random policy" in out and "return, first 500 steps" in out
    again = E.main(eval_args([ckpt], tmp_path, out_dir=str(tmp_path / "eval2")))
    assert again[0] == rows[0]  # seeded


def test_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError):
        E.main(eval_args([tmp_path / "missing.pt"], tmp_path))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        E.main(eval_args([tmp_path / "junk.pt"], tmp_path))
    ckpt = tmp_path / "m.pt"
    write_checkpoint(ckpt, size=4)
    with pytest.raises(ValueError, match="trained on dark observations"):
        E.main(eval_args([ckpt], tmp_path, env_obs="light"))
    held_out = len(K.task_split(4)[1])
    with pytest.raises(ValueError, match="--allow-train-tasks"):
        E.main(eval_args([ckpt], tmp_path, num_envs=held_out + 1))
    rows = E.main(eval_args([ckpt], tmp_path, num_envs=held_out + 1, allow_train_tasks=True, steps=60))
    assert rows[0]["envs"] == held_out + 1


def test_cli_error_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "ad_eval.py"), "--checkpoints", "nope.pt"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "nope.pt" in result.stderr
