"""ad_train.py: causality, learning, checkpoints, Light->Dark, end to end, bad input."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import ad_train as A
import keydoor_env as K
import sac_collect as S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG = {
    "sampler": torch.Generator().get_state(),
    "torch": torch.get_rng_state(),
    "cuda": torch.empty(0, dtype=torch.uint8),
}


def small_model(obs_dim=4, context=12, dropout=0.0, arrival=False):
    torch.manual_seed(0)
    return A.DecisionModel(
        A.ModelConfig(
            obs_dim=obs_dim, context=context, n_layer=2, n_head=2, n_embd=16, d_ff=32, dropout=dropout, arrival=arrival
        )
    ).eval()


def random_inputs(B, T, obs_dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "observations": torch.rand((B, T, obs_dim), generator=g),
        "prev_actions": torch.randint(0, 5, (B, T), generator=g),
        "prev_rewards": torch.randint(0, 2, (B, T), generator=g).float(),
        "prev_dones": torch.randint(0, 2, (B, T), generator=g).float(),
        "prev_arrivals": torch.rand((B, T, 2), generator=g),
    }


@pytest.fixture(scope="module")
def sac_data(tmp_path_factory):
    """A tiny Nx1 Light dataset written by sac_collect.py."""
    tmp = tmp_path_factory.mktemp("sac")
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        S.main(
            S.Args(
                style="nx1",
                light=True,
                num_runs=4,
                steps=300,
                size=4,
                group_size=4,
                batch_size=16,
                hidden=16,
                learning_starts=100,
                log_every=100,
                progress=False,
                data_dir=str(tmp / "data"),
                cuda=False,
            )
        )
    finally:
        os.chdir(cwd)
    return tmp / "data"


def tiny_args(data_dir, **overrides):
    flags = dict(
        data_dir=str(data_dir),
        context=40,
        iterations=30,
        batch_size=8,
        n_layer=1,
        n_head=2,
        n_embd=16,
        d_ff=32,
        warmup_iterations=5,
        log_every=10,
        val_every=10,
        save_every=10,
        eval_every=15,
        eval_envs=2,
        eval_steps=60,
        progress=False,
        cuda=False,
    )
    flags.update(overrides)
    return A.Args(**flags)


@pytest.mark.parametrize("arrival", [False, True])
def test_causality(arrival):
    model = small_model(arrival=arrival)
    inputs = random_inputs(3, 12)
    logits = model(**inputs)
    for t in (0, 5, 10):
        changed = {k: v.clone() for k, v in inputs.items()}
        changed["observations"][:, t + 1 :] += 1.0
        changed["prev_actions"][:, t + 1 :] = (changed["prev_actions"][:, t + 1 :] + 1) % 5
        changed["prev_rewards"][:, t + 1 :] = 1 - changed["prev_rewards"][:, t + 1 :]
        changed["prev_dones"][:, t + 1 :] = 1 - changed["prev_dones"][:, t + 1 :]
        changed["prev_arrivals"][:, t + 1 :] += 1.0
        other = model(**changed)
        torch.testing.assert_close(other[:, : t + 1], logits[:, : t + 1], rtol=0, atol=0)
        assert not torch.allclose(other[:, t + 1 :], logits[:, t + 1 :])
    # the arrival cells are read by a model with the flag only
    only_arrivals = dict(inputs, prev_arrivals=inputs["prev_arrivals"] + 1.0)
    assert torch.equal(model(**only_arrivals), logits) != arrival
    if arrival:
        with pytest.raises(ValueError, match="needs prev_arrivals"):
            model(**dict(inputs, prev_arrivals=None))


@pytest.mark.parametrize("arrival", [False, True])
def test_kv_cache_matches_full_recompute(arrival):
    model = small_model(context=12, arrival=arrival)
    inputs = random_inputs(2, 12)
    full = model(**inputs)
    caches = [{} for _ in model.blocks]
    for t in range(12):
        step = {k: v[:, t : t + 1] for k, v in inputs.items()}
        out = model(**step, positions=torch.tensor([t]), caches=caches)
        torch.testing.assert_close(out[:, 0], full[:, t], rtol=1e-5, atol=1e-5)


def synthetic_dataset(folder, runs=3, steps=400):
    """Histories of a scripted agent whose action is a function of its observation: learnable."""
    for run in range(runs):
        env = K.KeyDoorVectorEnv(1, size=5, light=True, tasks=K.task_split(5, "train")[run : run + 1])
        obs, _ = env.reset(seed=run)
        hist = {k: [] for k in K.HISTORY_DTYPES}
        for _ in range(steps):
            action = np.array([1 if obs[0, 0] < 0.5 else 3 if obs[0, 1] < 0.5 else int(round(obs[0, 3] * 50)) % 5])
            hist["observations"].append(obs[0]), hist["tasks"].append(env.tasks[0].copy())
            obs, r, term, trunc, _ = env.step(action)
            hist["actions"].append(action[0]), hist["rewards"].append(r[0])
            hist["terminations"].append(term[0]), hist["truncations"].append(trunc[0])
        K.save_history(
            os.path.join(folder, f"run_{run:05d}.npz"),
            {k: np.array(v) for k, v in hist.items()},
            {"size": 5, "light": True, "style": "nx1", "seed": 0, "run": run, "algorithm": "scripted"},
        )


def test_loss_drops_on_synthetic_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    synthetic_dataset(tmp_path / "data" / "nx1-light")
    first = A.main(
        tiny_args(
            tmp_path / "data", iterations=10, lr=3e-3, log_every=10, eval_every=0, val_fraction=0.34, exp_name="a"
        )
    )
    last = A.main(
        tiny_args(
            tmp_path / "data",
            iterations=150,
            lr=3e-3,
            log_every=10,
            eval_every=0,
            val_fraction=0.34,
            exp_name="b",
            n_embd=32,
            dropout=0.0,
        )
    )
    assert last["val_loss"] < 0.75 * first["val_loss"], (first, last)
    assert last["accuracy"] > 0.6


def test_light_to_dark_stripping_is_exact(sac_data):
    runs, meta = A.load_dataset(str(sac_data / "nx1-light"), light_obs=False)
    light_runs, light_meta = A.load_dataset(str(sac_data / "nx1-light"), light_obs=True)
    assert meta["obs_dim"] == 4 and light_meta["obs_dim"] == 8
    for run, light_run, name in zip(runs, light_runs, sorted(os.listdir(sac_data / "nx1-light"))):
        history, _ = K.load_history(str(sac_data / "nx1-light" / name))
        steps = torch.arange(len(run["actions"]))[None]  # the whole history as one window, decoded by the sampler
        dark = A.WindowSampler([run], 1, meta["obs_scale"], torch.device("cpu")).gather(steps)[0]["observations"][0]
        np.testing.assert_array_equal(dark.numpy(), history["observations"][:, :4])
        light = A.WindowSampler([light_run], 1, light_meta["obs_scale"], torch.device("cpu")).gather(steps)[0]
        np.testing.assert_array_equal(light["observations"][0].numpy(), history["observations"])
        dark = dark.numpy()
        # and it is what the Dark env shows on replay
        env = K.KeyDoorEnv(size=4, light=False)
        obs, _ = env.reset(options={"task": history["tasks"][0]})
        for t in range(60):
            np.testing.assert_array_equal(dark[t], obs)
            obs, _, term, trunc, _ = env.step(int(history["actions"][t]))
            if term or trunc:
                obs, _ = env.reset()


def test_arrival_cells_replay_the_env(sac_data):
    """prev_arrivals[t + 1] is the cell the env moved the agent to at step t, the door's cell included."""
    runs, meta = A.load_dataset(str(sac_data / "nx1-light"), light_obs=False, arrival=True)
    names = sorted(n for n in os.listdir(sac_data / "nx1-light") if n.endswith(".npz"))
    doors_checked = 0
    for run, name in zip(runs, names):
        history, _ = K.load_history(str(sac_data / "nx1-light" / name))
        env = K.KeyDoorEnv(size=4)
        env.reset(options={"task": history["tasks"][0]})
        assert tuple(run["prev_arrivals"][0]) == A.FIRST_PREV_ARRIVAL == tuple(env._pos)
        for t in range(len(history["actions"]) - 1):
            _, _, term, trunc, _ = env.step(int(history["actions"][t]))
            assert tuple(run["prev_arrivals"][t + 1]) == tuple(env._pos), t
            if term:
                assert tuple(env._pos) == tuple(history["tasks"][t][2:])
                doors_checked += 1
            if term or trunc:
                env.reset()
    assert doors_checked > 0
    # the sampler scales the cells as the observations' positions
    sampler = A.WindowSampler(runs, 40, meta["obs_scale"], torch.device("cpu"))
    inputs, _ = sampler.gather(torch.arange(40)[None])
    np.testing.assert_allclose(inputs["prev_arrivals"][0].numpy() * 3, runs[0]["prev_arrivals"][:40])
    assert (
        "prev_arrivals"
        not in A.WindowSampler(
            A.load_dataset(str(sac_data / "nx1-light"), False)[0], 40, meta["obs_scale"], torch.device("cpu")
        ).gather(torch.arange(40)[None])[0]
    )


def test_select_steps_and_previous_tokens():
    dones = np.zeros(200, dtype=bool)
    dones[[49, 99, 149, 199]] = True
    history = {
        "observations": np.zeros((200, 4), np.float32),
        "actions": np.arange(200) % 5,
        "rewards": (np.arange(200) % 7 == 0).astype(np.float32),
        "terminations": np.zeros(200, bool),
        "truncations": dones,
    }
    run = A.select_steps(history, history_steps=150)
    assert len(run["actions"]) == 150 and len(A.select_steps(history, 0)["actions"]) == 200
    assert run["prev_actions"][0] == A.FIRST_PREV_ACTION and run["prev_dones"][0] == A.FIRST_PREV_DONE
    assert run["prev_actions"][1] == history["actions"][0] and not run["prev_dones"][1]
    assert run["prev_dones"][50] and run["prev_actions"][50] == history["actions"][49]
    assert run["prev_rewards"][8] == history["rewards"][7] == 1
    arrivals = np.stack([np.arange(1, 201) % 4, np.arange(1, 201) % 3], axis=1).astype(np.uint8)  # never (0, 0) first
    run = A.select_steps(dict(history, arrivals=arrivals), history_steps=150)
    assert tuple(run["prev_arrivals"][0]) == A.FIRST_PREV_ARRIVAL
    assert tuple(run["prev_arrivals"][1]) == tuple(arrivals[0]) and tuple(run["prev_arrivals"][50]) == tuple(
        arrivals[49]
    )


def test_episode_stride_keeps_whole_episodes_and_their_boundaries():
    lengths = [5, 7, 3, 6, 4, 8, 2]  # seven episodes of different lengths
    dones = np.concatenate([np.eye(1, n, n - 1, dtype=bool)[0] for n in lengths])
    T = len(dones)
    history = {
        "observations": np.zeros((T, 4), np.float32),
        "actions": np.arange(T) % 5,
        "rewards": (np.arange(T) % 3 == 0).astype(np.float32),
        "terminations": np.zeros(T, bool),
        "truncations": dones,
        "arrivals": np.stack([np.arange(T) % 4, np.arange(T) % 3], axis=1).astype(np.uint8),
    }
    np.testing.assert_equal(A.select_steps(history, 0, episode_stride=1), A.select_steps(history, 0))
    ends = np.cumsum(lengths)
    starts = ends - lengths
    for stride in (2, 3, 7):
        run = A.select_steps(history, 0, episode_stride=stride)
        kept = np.concatenate([np.arange(starts[e], ends[e]) for e in range(0, len(lengths), stride)])
        np.testing.assert_array_equal(run["actions"], history["actions"][kept])  # whole episodes 0, k, 2k, ...
        assert run["prev_dones"].sum() == len(range(0, len(lengths), stride))  # a boundary before each episode
        first_steps = np.flatnonzero(run["prev_dones"])
        # the first step of a kept episode sees the last step of the kept episode before it
        for i in first_steps[1:]:
            assert run["prev_actions"][i] == history["actions"][kept[i - 1]]
            assert run["prev_rewards"][i] == history["rewards"][kept[i - 1]]
            assert tuple(run["prev_arrivals"][i]) == tuple(history["arrivals"][kept[i - 1]])
            assert history["truncations"][kept[i - 1]]
    # the learning-phase cut comes first (in the history's steps), then the stride
    run = A.select_steps(history, ends[3], episode_stride=2)
    np.testing.assert_array_equal(run["actions"], history["actions"][np.r_[0:5, starts[2] : ends[2]]])


def test_select_steps_auto_keeps_the_learning_phase():
    returns_per_episode = [0.0] * 20 + [2.0] * 60  # the run solves its task from episode 21 on
    rewards, dones = [], []
    for ret in returns_per_episode:
        episode = np.zeros(50, np.float32)
        episode[: int(ret)] = 1.0
        rewards.append(episode), dones.append(np.eye(1, 50, 49, dtype=bool)[0])
    rewards, dones = np.concatenate(rewards), np.concatenate(dones)
    history = {
        "observations": np.zeros((len(rewards), 4), np.float32),
        "actions": np.zeros(len(rewards), np.int64),
        "rewards": rewards,
        "terminations": np.zeros(len(rewards), bool),
        "truncations": dones,
    }
    solved = K.first_solved_step(rewards, dones)
    assert solved == 29 * 50  # the 10-episode average first reaches 1.8 at the end of episode 29
    assert len(A.select_steps(history, -1)["actions"]) == 2 * solved
    assert len(A.select_steps(history, -1, min_steps=3500)["actions"]) == 3500
    assert len(A.select_steps(history, -1, min_steps=9000)["actions"]) == 4000  # capped by the history
    # with a stride, enough of the history for `min_steps` kept steps
    assert len(A.select_steps(history, -1, min_steps=1000, episode_stride=4)["actions"]) == 1000
    never = dict(history, rewards=np.zeros_like(rewards))
    assert len(A.select_steps(never, -1)["actions"]) == len(rewards)


def test_end_to_end_on_sac_data(sac_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    shutil.copytree(sac_data, data)
    result = A.main(tiny_args(data))
    checkpoint = A.load_checkpoint(result["checkpoint"])
    assert checkpoint["iteration"] == 30 and checkpoint["data"]["obs_dim"] == 4 and checkpoint["data"]["size"] == 4
    assert checkpoint["args"]["context"] == 40
    (run_dir,) = [r for r, _, files in os.walk(tmp_path / "runs") if any("tfevents" in f for f in files)]
    events = EventAccumulator(run_dir)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in (
        "losses/train_loss",
        "losses/val_loss",
        "charts/accuracy",
        "charts/learning_rate",
        "charts/tokens_per_second",
        "charts/iterations_per_second",
        "charts/val_accuracy",
        "eval/return",
    ):
        assert tag in tags, tag
    assert [e.step for e in events.Scalars("eval/return")] == [15, 30]
    assert [e.step for e in events.Scalars("losses/val_loss")] == [10, 20, 30]

    # the checkpoint rebuilds the model alone, with identical outputs
    model = A.model_from_checkpoint(checkpoint).eval()
    again = A.model_from_checkpoint(A.load_checkpoint(result["checkpoint"])).eval()
    inputs = random_inputs(2, 40)
    torch.testing.assert_close(model(**inputs), again(**inputs), rtol=0, atol=0)

    # rerunning with more iterations resumes from iteration 30
    capsys.readouterr()
    resumed = A.main(tiny_args(data, iterations=40))
    out = capsys.readouterr().out
    assert "resuming" in out and "at iteration 30" in out
    assert A.load_checkpoint(resumed["checkpoint"])["iteration"] == 40
    # resuming onto other training windows is refused
    with pytest.raises(ValueError, match="another model, data"):
        A.main(tiny_args(data, iterations=50, history_steps=200))
    # a checkpoint of another shape is refused, the arrival token included
    with pytest.raises(ValueError, match="another model"):
        A.main(tiny_args(data, iterations=50, n_embd=32))
    with pytest.raises(ValueError, match="another model"):
        A.main(tiny_args(data, iterations=50, arrival_token=True))
    # and so is a changed optimizer: the run would not be the one its name and hyperparameter table say
    for changed in ({"lr": 1e-2}, {"batch_size": 3}, {"warmup_iterations": 1}, {"max_grad_norm": 0.5}):
        with pytest.raises(ValueError, match="optimizer"):
            A.main(tiny_args(data, iterations=50, **changed))


def test_resume_after_a_kill_is_bit_identical(sac_data, tmp_path, monkeypatch):
    """A run killed after its checkpoint at iteration 20 and rerun ends exactly where an uninterrupted
    run ends, dropout included: the sampler's and torch's generators are saved and restored."""
    monkeypatch.chdir(tmp_path)
    flags = dict(iterations=40, save_every=20, eval_every=0, dropout=0.1)
    for folder in ("a", "b"):
        shutil.copytree(sac_data / "nx1-light", tmp_path / folder / "nx1-light")
    whole = A.load_checkpoint(A.main(tiny_args(tmp_path / "a", **flags))["checkpoint"])
    sample, calls = A.WindowSampler.sample, []

    def killed_after_the_checkpoint(self, *args):
        calls.append(1)
        if len(calls) == 25:  # iteration 25, after the checkpoint of iteration 20
            raise KeyboardInterrupt
        return sample(self, *args)

    monkeypatch.setattr(A.WindowSampler, "sample", killed_after_the_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        A.main(tiny_args(tmp_path / "b", **flags))
    monkeypatch.setattr(A.WindowSampler, "sample", sample)
    path = str(tmp_path / "b" / "checkpoints" / "ad__nx1-light__dark__ctx40__1.pt")
    assert A.load_checkpoint(path)["iteration"] == 20
    torch.manual_seed(12345)  # whatever the global generator holds, the resumed run restores its own
    resumed = A.load_checkpoint(A.main(tiny_args(tmp_path / "b", **flags))["checkpoint"])
    assert resumed["iteration"] == 40
    for name, tensor in whole["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name


def test_outputs_checked_before_work_and_stale_parts_removed(sac_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(sac_data / "nx1-light", tmp_path / "d" / "nx1-light")
    (tmp_path / "d" / "checkpoints").write_bytes(b"")  # a file where the folder should be
    with pytest.raises(OSError, match="cannot write"):
        A.main(tiny_args(tmp_path / "d"))
    os.remove(tmp_path / "d" / "checkpoints")
    (tmp_path / "d" / "checkpoints").mkdir()
    stale = tmp_path / "d" / "checkpoints" / ".tmp-otherhost-1-x.part"
    stale.write_bytes(b"half a checkpoint")
    os.utime(stale, (0, 0))
    A.main(tiny_args(tmp_path / "d", iterations=2, eval_every=0))
    assert os.listdir(tmp_path / "d" / "checkpoints") == ["ad__nx1-light__dark__ctx40__1.pt"]
    with pytest.raises(
        ValueError, match="21 evaluation envs: the validation split"
    ):  # more eval envs than validation tasks
        A.main(tiny_args(tmp_path / "d", eval_envs=21, iterations=4))


def test_sampler_draws_what_the_old_host_gather_drew(sac_data):
    """The windows are gathered on the device, but the host draws only start indices: the same windows."""
    runs, meta = A.load_dataset(str(sac_data / "nx1-light"), light_obs=False)
    sampler = A.WindowSampler(runs, 40, meta["obs_scale"], torch.device("cpu"))
    inputs, targets = sampler.sample(6, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    run = torch.randint(len(sampler.offsets), (6,), generator=g)
    start = (torch.rand(6, generator=g) * sampler.num_starts[run]).long()
    index = (sampler.offsets[run] + start)[:, None] + torch.arange(40)
    tokens = np.concatenate([r["actions"] for r in runs])
    np.testing.assert_array_equal(targets.numpy(), tokens[index.numpy()])
    assert inputs["observations"].shape == (6, 40, 4) and inputs["observations"].dtype == torch.float32


def test_end_to_end_with_arrival_token(sac_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(sac_data, tmp_path / "data")
    result = A.main(tiny_args(tmp_path / "data", arrival_token=True, exp_name="ad-arrival"))
    checkpoint = A.load_checkpoint(result["checkpoint"])
    assert checkpoint["model_config"]["arrival"] and checkpoint["iteration"] == 30
    assert "eval_return" in result  # the in-training evaluation ran the model (it raises without arrivals)
    model = A.model_from_checkpoint(checkpoint)
    assert model.embed.in_features == 4 + K.NUM_ACTIONS + 2 + 2


def test_arrival_token_refuses_data_off_the_grid(sac_data, tmp_path):
    bad = tmp_path / "bad" / "nx1-light"
    shutil.copytree(sac_data / "nx1-light", bad)
    history, config = K.load_history(str(bad / "run_00002.npz"))
    history["actions"] = (history["actions"] + 1) % K.NUM_ACTIONS  # actions that did not lead to the next cells
    K.save_history(str(bad / "run_00002.npz"), history, config)
    A.load_dataset(str(bad), light_obs=False)  # without the flag the cells are not needed
    with pytest.raises(ValueError, match="run_00002.npz: observations do not follow the moves"):
        A.main(tiny_args(tmp_path / "bad", arrival_token=True))


def test_checkpoint_round_trip(tmp_path):
    model = small_model()
    path = str(tmp_path / "m.pt")
    optimizer = model.optimizer(1e-3, 0.1, torch.device("cpu"))
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "iteration": 3,
        "args": {},
        "model_config": A.asdict(model.config),
        "data": {"dataset": "d", "size": 5, "obs_dim": 4},
        "run_name": "x",
        "rng": RNG,
    }
    K.atomic_write(path, lambda f: torch.save(checkpoint, f))
    rebuilt = A.model_from_checkpoint(A.load_checkpoint(path)).eval()
    inputs = random_inputs(2, 12)
    torch.testing.assert_close(rebuilt(**inputs), model(**inputs), rtol=0, atol=0)


def test_weight_decay_only_on_matrices():
    model = small_model()
    decay, no_decay = model.optimizer(1e-3, 0.1, torch.device("cpu")).param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])


def test_bad_input(sac_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        A.main(tiny_args(tmp_path / "nothing"))
    (tmp_path / "empty" / "nx1-light").mkdir(parents=True)
    with pytest.raises(ValueError, match="no .npz"):
        A.main(tiny_args(tmp_path / "empty"))
    with pytest.raises(ValueError, match="--context must be >= 1"):
        A.main(tiny_args(sac_data, context=0))
    with pytest.raises(ValueError, match="longer than every history"):
        A.main(tiny_args(sac_data, context=301))
    mixed = tmp_path / "mixed" / "nx1-light"
    shutil.copytree(sac_data / "nx1-light", mixed)
    history, config = K.load_history(str(mixed / "run_00000.npz"))
    history["observations"] = history["observations"][:, :4]
    K.save_history(str(mixed / "run_00009.npz"), history, config)
    with pytest.raises(ValueError, match="observation features"):
        A.main(tiny_args(tmp_path / "mixed"))
    corrupt = tmp_path / "corrupt" / "nx1-light"
    shutil.copytree(sac_data / "nx1-light", corrupt)
    (corrupt / "run_00001.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="run_00001.npz: not a readable"):
        A.main(tiny_args(tmp_path / "corrupt"))
    with pytest.raises(ValueError, match="needs Light data"):
        dark = tmp_path / "dark" / "nx1-light"
        dark.mkdir(parents=True)
        K.save_history(str(dark / "run_00000.npz"), history, config)
        A.main(tiny_args(tmp_path / "dark", light_obs=True))
    with pytest.raises(ValueError, match="not a checkpoint of this version of ad_train.py"):
        torch.save({"model": {}}, tmp_path / "x.pt")
        A.load_checkpoint(str(tmp_path / "x.pt"))


def test_cli_error_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "ad_train.py"), "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "does not exist" in result.stderr


def test_cli_smoke(sac_data, tmp_path):
    shutil.copytree(sac_data, tmp_path / "data")
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "ad_train.py"),
            "--context",
            "20",
            "--iterations",
            "4",
            "--n-embd",
            "16",
            "--n-head",
            "2",
            "--d-ff",
            "16",
            "--n-layer",
            "1",
            "--eval-steps",
            "30",
            "--eval-every",
            "4",
            "--no-progress",
            "--no-cuda",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert os.path.exists(tmp_path / "data" / "checkpoints" / "ad__nx1-light__dark__ctx20__1.pt")
