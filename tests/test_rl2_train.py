"""rl2_train.py: causality, trials, end to end, resume, and the rl2 dataset read by ad_train.py."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import ad_train as A
import keydoor_env as K
import rl2_train as R

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(tmp_path, **overrides):
    flags = dict(size=4, iterations=3, num_envs=6, num_minibatches=2, episodes_per_trial=3, save_every=2, eval_every=2,
                 eval_envs=3, n_layer=1, n_embd=16, n_head=2, d_ff=16, data_dir=str(tmp_path / "data"),
                 progress=False, cuda=False)
    flags.update(overrides)
    return R.Args(**flags)


@pytest.mark.parametrize("arrival", [False, True])
def test_policy_is_causal_and_cache_matches(arrival):
    torch.manual_seed(0)
    model = R.ActorCritic(R.ModelConfig(context=20, n_layer=2, n_head=2, n_embd=16, d_ff=16, arrival=arrival)).eval()
    g = torch.Generator().manual_seed(0)
    inputs = {"observations": torch.rand(2, 20, 4, generator=g), "prev_actions": torch.randint(0, 5, (2, 20), generator=g),
              "prev_rewards": torch.randint(0, 2, (2, 20), generator=g).float(),
              "prev_dones": torch.randint(0, 2, (2, 20), generator=g).float(), "prev_arrivals": torch.rand(2, 20, 2, generator=g)}
    logits, values = model(**inputs)
    changed = {k: v.clone() for k, v in inputs.items()}
    changed["observations"][:, 8:] += 1
    changed["prev_dones"][:, 8:] = 1 - changed["prev_dones"][:, 8:]
    other_logits, other_values = model(**changed)
    assert torch.equal(other_logits[:, :8], logits[:, :8]) and torch.equal(other_values[:, :8], values[:, :8])
    assert not torch.allclose(other_logits[:, 8:], logits[:, 8:])
    moved = {**inputs, "prev_arrivals": inputs["prev_arrivals"] + 1}  # read only with --arrival-token
    assert torch.equal(model(**moved)[0], logits) != arrival
    caches = [{} for _ in model.blocks]
    for t in range(20):
        step_logits, step_values = model(**{k: v[:, t:t + 1] for k, v in inputs.items()}, start=t, caches=caches)
        torch.testing.assert_close(step_logits[:, 0], logits[:, t], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(step_values[:, 0], values[:, t], rtol=1e-5, atol=1e-5)


def test_trials_keep_their_task_and_have_their_episodes():
    torch.manual_seed(0)
    model = R.ActorCritic(R.ModelConfig(context=150, n_layer=1, n_head=2, n_embd=16, d_ff=16)).eval()
    tasks = K.task_split(4)[0][:5]
    env = K.KeyDoorVectorEnv(5, size=4, tasks=tasks)
    env.reset(seed=0)
    buf = R.run_trials(model, env, tasks, 3, torch.Generator().manual_seed(0), torch.device("cpu"))
    for i, history in enumerate(R.trials_to_histories(buf, tasks)):
        dones = history["terminations"] | history["truncations"]
        assert dones.sum() == 3 and dones[-1]  # exactly the trial's episodes, ending with the last
        assert (history["tasks"] == tasks[i]).all()
        # replay: the trial is a real run of the env on that task
        single = K.KeyDoorEnv(size=4, task=tasks[i])
        obs, _ = single.reset()
        for t, action in enumerate(history["actions"]):
            np.testing.assert_array_equal(history["observations"][t], obs)
            obs, reward, term, trunc, _ = single.step(int(action))
            assert (reward, term, trunc) == (history["rewards"][t], history["terminations"][t], history["truncations"][t])
            if t + 1 < len(history["actions"]):  # the next token holds where this action led, the door cell included
                np.testing.assert_array_equal(buf["prev_arrivals"][i, t + 1].numpy(), obs[:2])
            if term or trunc:
                obs, _ = single.reset()
    assert buf["prev_dones"][:, 0].eq(1).all()  # the first token looks like an episode start, as in AD
    assert buf["prev_arrivals"][:, 0].eq(0).all()  # before the first action the agent stands on the start cell


def test_gae_stops_at_the_trial_end():
    buf = {"rewards": torch.tensor([[0.0, 1.0, 0.0]]), "values": torch.tensor([[0.5, 0.5, 9.0]]),
           "active": torch.tensor([[True, True, False]])}
    advantages, returns = R.gae(buf, gamma=1.0, lam=1.0)
    assert returns[0, 1] == pytest.approx(1.0) and returns[0, 0] == pytest.approx(1.0)
    assert advantages[0, 2] == 0


def test_end_to_end_resume_and_ad_reads_the_dataset(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    result = R.main(tiny(tmp_path))
    assert len(result["by_episode"]) == 3 and 0 <= result["first_500"] <= 2
    checkpoint = torch.load(result["checkpoint"], weights_only=True)
    assert checkpoint["iteration"] == 3
    # the held-out trials are written in ad_eval.py's layout, consistent with the printed metrics
    with np.load(result["eval"], allow_pickle=False) as f:
        assert set(f.files) >= {"tasks", "episode_env", "episode_return", "episode_end_step", "by_episode", "config"}
        np.testing.assert_allclose(f["by_episode"], result["by_episode"])
        counts = np.bincount(f["episode_env"], minlength=len(f["tasks"]))
        assert (counts == 3).all()  # every held-out trial ran its 3 episodes
        for i in range(3):  # the i-th episode of each env, averaged over envs, is the by-episode return
            np.testing.assert_allclose(f["episode_return"].reshape(-1, 3)[:, i].mean(), result["by_episode"][i], atol=1e-6)
    folder = tmp_path / "data" / "rl2"
    names = sorted(os.listdir(folder))
    assert names[:2] == ["rl2__4x4__1__run_00000_it000001.npz", "rl2__4x4__1__run_00000_it000003.npz"] and len(names) == 12
    history, config = K.load_history(str(folder / names[0]))
    assert config["algorithm"] == "rl2-ppo" and config["iterations"] == [1, 2]
    dones = history["terminations"] | history["truncations"]
    assert dones.sum() == 6  # 2 iterations x 3 episodes
    train = {tuple(t) for t in K.task_split(4)[0]}
    assert {tuple(t) for t in history["tasks"]} <= train
    # resume: more iterations continue from the checkpoint
    capsys.readouterr()
    R.main(tiny(tmp_path, iterations=4))
    assert "resuming" in capsys.readouterr().out
    assert torch.load(result["checkpoint"], weights_only=True)["iteration"] == 4
    assert len(os.listdir(folder)) == 18  # a new chunk, the earlier ones kept
    # rerunning a finished run trains nothing and evaluates the checkpoint again
    again = R.main(tiny(tmp_path, iterations=4))
    assert len(os.listdir(folder)) == 18 and again["eval"] == result["eval"]
    # ad_train reads the fifth dataset
    out = A.main(A.Args(dataset="rl2", data_dir=str(tmp_path / "data"), context=20, updates=3, batch_size=4, n_layer=1,
                        n_head=2, n_embd=16, d_ff=16, eval_every=0, progress=False, cuda=False))
    assert os.path.exists(out["checkpoint"])
    with pytest.raises(ValueError, match="another shape"):
        R.main(tiny(tmp_path, iterations=5, n_embd=32))
    with pytest.raises(ValueError, match="another shape"):  # --arrival-token changes the model's input
        R.main(tiny(tmp_path, iterations=5, arrival_token=True))
    arrival = R.main(tiny(tmp_path, iterations=2, arrival_token=True, exp_name="rl2-arrival"))
    assert torch.load(arrival["checkpoint"], weights_only=True)["model_config"]["arrival"] is True
    assert len(os.listdir(folder)) == 18 + 6  # its own chunks, beside the first run's


def test_cli_error_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "rl2_train.py"), "--iterations", "0"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "--iterations" in result.stderr
