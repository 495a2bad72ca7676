"""sac_collect.py: the files it writes, agent independence, resume, sharding (by flags and under torchrun), the
progress bar, sizes no machine holds, a full disk, and bad input."""

import errno
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import keydoor_env as K
import sac_collect as S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(tmp_path, **overrides):
    """Flags small enough for a test that still reach many gradient updates."""
    flags = dict(
        style="nx1",
        light=True,
        num_runs=3,
        steps=300,
        size=4,
        group_size=2,
        batch_size=16,
        hidden=16,
        learning_starts=100,
        log_every=100,
        progress=False,
        data_dir=str(tmp_path / "data"),
        cuda=False,
    )
    flags.update(overrides)
    return S.Args(**flags)


def replay_through_env(history, size, light):
    """Replay a history's actions through KeyDoorEnv and check every observation and reward."""
    env = K.KeyDoorEnv(size=size, light=light)
    obs, _ = env.reset(seed=0, options={"task": history["tasks"][0]})
    for t in range(len(history["actions"])):
        np.testing.assert_array_equal(history["observations"][t], obs, err_msg=f"step {t}")
        np.testing.assert_array_equal(history["tasks"][t], env.task)
        obs, reward, term, trunc, _ = env.step(int(history["actions"][t]))
        assert (reward, term, trunc) == (history["rewards"][t], history["terminations"][t], history["truncations"][t])
        if term or trunc:
            next_task = history["tasks"][t + 1] if t + 1 < len(history["actions"]) else env.task
            obs, _ = env.reset(options={"task": next_task})


@pytest.fixture(scope="module")
def nx1_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("nx1")
    cwd = os.getcwd()
    os.chdir(tmp_path)  # TensorBoard writes to ./runs
    try:
        summary = S.main(tiny(tmp_path))
    finally:
        os.chdir(cwd)
    return tmp_path, summary


def test_nx1_files_follow_the_contract(nx1_run):
    tmp_path, summary = nx1_run
    folder = tmp_path / "data" / "nx1-light"
    assert sorted(os.listdir(folder)) == ["run_00000.npz", "run_00001.npz", "run_00002.npz"]
    train = {tuple(t) for t in K.task_split(4, "train")}
    tasks_seen = set()
    for run in range(3):
        history, config = K.load_history(str(folder / f"run_{run:05d}.npz"))
        assert config["run"] == run and config["style"] == "nx1" and config["light"] is True and config["size"] == 4
        assert config["algorithm"] == "sac"
        assert history["observations"].shape == (300, 8) and history["observations"].dtype == np.float32
        assert history["actions"].dtype == np.int64 and history["tasks"].shape == (300, 4)
        assert (history["tasks"] == history["tasks"][0]).all()  # Nx1: one fixed task per run
        assert tuple(history["tasks"][0]) in train
        tasks_seen.add(tuple(history["tasks"][0]))
        replay_through_env(history, 4, True)
    assert len(tasks_seen) == 3  # every run has its own task
    assert summary["runs"] == 3


def test_nx1_tensorboard_curves(nx1_run):
    tmp_path, _ = nx1_run
    group_dirs = [
        os.path.join(root) for root, _, files in os.walk(tmp_path / "runs") if any("tfevents" in f for f in files)
    ]
    assert len(group_dirs) == 2  # two groups of at most 2 runs
    events = EventAccumulator(group_dirs[0])
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in (
        "charts/episodic_return_mean",
        "charts/episodic_return_p50",
        "charts/SPS",
        "losses/qf_loss",
        "losses/actor_loss",
        "losses/alpha",
        "charts/window_solved_fraction",
    ):
        assert tag in tags, tag
    assert [e.step for e in events.Scalars("losses/qf_loss")][-1] == 300


def test_1xn_dark_resamples_train_tasks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    S.main(tiny(tmp_path, style="1xn", light=False, num_runs=1, steps=400))
    history, config = K.load_history(str(tmp_path / "data" / "1xn-dark" / "run_00000.npz"))
    assert history["observations"].shape == (400, 4)
    ends = np.flatnonzero(history["terminations"] | history["truncations"])
    assert len(ends) >= 8
    episode_tasks = {tuple(history["tasks"][e]) for e in ends}
    assert len(episode_tasks) > 4  # a new task at (nearly) every reset
    changes = np.flatnonzero((history["tasks"][1:] != history["tasks"][:-1]).any(axis=1))
    assert set(changes) <= set(ends)  # the task changes only at resets
    train = {tuple(t) for t in K.task_split(4, "train")}
    assert {tuple(t) for t in history["tasks"]} <= train
    replay_through_env(history, 4, False)


def test_codec_round_trip():
    codec = S.Codec(5, True, torch.device("cpu"))
    env = K.KeyDoorVectorEnv(6, size=5, light=True)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(120):
        states = codec.encode_states(torch.as_tensor(obs))
        tasks = codec.encode_tasks(env.tasks)
        decoded = codec.observations(states, torch.as_tensor(tasks)).numpy()
        np.testing.assert_array_equal(decoded, obs)
        np.testing.assert_array_equal(codec.task_cells[tasks], env.tasks)
        obs, *_ = env.step(rng.integers(0, 5, 6))


def batch(A, B, D, seed):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand((A, B, D), generator=g),
        torch.randint(0, 5, (A, B), generator=g),
        torch.randint(0, 2, (A, B), generator=g).float(),
        torch.rand((A, B, D), generator=g),
        torch.randint(0, 2, (A, B), generator=g).float(),
    )


def population_state(pop):
    return [t.detach().clone() for t in pop.actor + pop.critic + pop.critic_target + [pop.log_alpha]]


def test_agents_are_independent():
    """Perturbing agent 0's data and weights leaves every other agent's updates bit-identical."""
    A = 4  # agents
    B = 32  # batch
    D = 8  # observation features
    args = S.resolve(S.Args(hidden=16, batch_size=B))

    def train(perturb: bool):
        torch.manual_seed(0)
        pop = S.Population(A, D, args, torch.Generator().manual_seed(0), torch.device("cpu"))
        if perturb:
            with torch.no_grad():
                for p in pop.actor + pop.critic:
                    p[0].add_(torch.randn_like(p[0]))
                pop.critic[0][A].mul_(3.0)  # agent 0's second critic lives at row A
                pop.log_alpha[0] += 1.0
        for step in range(5):
            observations, actions, rewards, next_observations, dones = batch(A, B, D, step)
            if perturb:
                observations[0] = torch.rand(B, D)
                rewards[0] = rewards[0] + 5.0
                actions[0] = (actions[0] + 1) % 5
            pop.update(observations, actions, rewards, next_observations, dones)
            pop.act(observations[:, 0], torch.rand(A))
        return pop

    base = population_state(train(False))
    perturbed = population_state(train(True))
    for b, p in zip(base, perturbed, strict=True):
        if b.shape[0] == 2 * A:  # critics: agents 1.. of both twins
            others_base = torch.cat([b[1:A], b[A + 1 :]])
            others_perturbed = torch.cat([p[1:A], p[A + 1 :]])
            assert torch.equal(others_base, others_perturbed)
        else:
            assert torch.equal(b[1:], p[1:])
            assert not torch.equal(b[:1], p[:1])


def test_population_of_one_matches_agent_in_population():
    """An agent's update does not depend on which population it sits in."""
    B = 16  # batch
    D = 4  # observation features
    args = S.resolve(S.Args(hidden=8, batch_size=B))
    pop = S.Population(3, D, args, torch.Generator().manual_seed(0), torch.device("cpu"))
    alone = S.Population(1, D, args, torch.Generator().manual_seed(1), torch.device("cpu"))
    with torch.no_grad():
        for src, dst in zip(pop.actor, alone.actor, strict=True):
            dst.copy_(src[1:2])
        for src, dst in zip(pop.critic, alone.critic, strict=True):
            dst.copy_(torch.stack([src[1], src[3 + 1]]))
        for src, dst in zip(pop.critic_target, alone.critic_target, strict=True):
            dst.copy_(torch.stack([src[1], src[3 + 1]]))
    observations, actions, rewards, next_observations, dones = batch(3, B, D, 0)
    out_pop = pop.update(observations, actions, rewards, next_observations, dones)
    out_alone = alone.update(observations[1:2], actions[1:2], rewards[1:2], next_observations[1:2], dones[1:2])
    torch.testing.assert_close(out_pop["qf_loss"][1:2], out_alone["qf_loss"], rtol=1e-5, atol=1e-6)
    for src, dst in zip(pop.actor, alone.actor, strict=True):
        torch.testing.assert_close(src[1:2], dst, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_resume_skips_finished_and_rewrites_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = tiny(tmp_path, num_runs=3, steps=120)
    S.main(args)
    folder = tmp_path / "data" / "nx1-light"
    first = {n: K.load_history(str(folder / n))[0] for n in os.listdir(folder)}
    mtimes = {n: os.path.getmtime(folder / n) for n in os.listdir(folder)}
    os.remove(folder / "run_00001.npz")  # a group killed while writing its files
    (folder / "run_00001.npz.12345.part").write_bytes(b"half")  # and the temp file of the write the kill cut short
    S.main(tiny(tmp_path, num_runs=3, steps=120))
    # the killed write's temp file is left alone, never read as a run
    assert sorted(os.listdir(folder)) == ["run_00000.npz", "run_00001.npz", "run_00001.npz.12345.part", "run_00002.npz"]
    assert os.path.getmtime(folder / "run_00002.npz") == mtimes["run_00002.npz"]  # finished group skipped
    assert os.path.getmtime(folder / "run_00000.npz") == mtimes["run_00000.npz"]  # existing file kept
    again = K.load_history(str(folder / "run_00001.npz"))[0]
    for key in K.HISTORY_DTYPES:  # same seed, same data: the restarted group reproduces the run
        np.testing.assert_array_equal(again[key], first["run_00001.npz"][key])


def test_shards_are_disjoint_cover_and_match_one_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for shard in range(2):
        S.main(tiny(tmp_path, num_runs=5, steps=120, num_shards=2, shard_index=shard, group_size=2))
        written = sorted(os.listdir(tmp_path / "data" / "nx1-light"))
        # groups {0, 1}, {2, 3}, {4}: shard 0 takes the first and third, shard 1 the second
        assert written == (
            [f"run_{r:05d}.npz" for r in (0, 1, 4)] if shard == 0 else [f"run_{r:05d}.npz" for r in range(5)]
        )
    S.main(tiny(tmp_path, num_runs=5, steps=120, group_size=2, data_dir=str(tmp_path / "single")))
    for run in range(5):
        sharded = K.load_history(str(tmp_path / "data" / "nx1-light" / f"run_{run:05d}.npz"))[0]
        single = K.load_history(str(tmp_path / "single" / "nx1-light" / f"run_{run:05d}.npz"))[0]
        for key in K.HISTORY_DTYPES:
            np.testing.assert_array_equal(sharded[key], single[key])


def test_folder_of_another_configuration_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    S.main(tiny(tmp_path, num_runs=1, steps=120))
    folder = tmp_path / "data" / "nx1-light"
    before = {n: (folder / n).read_bytes() for n in os.listdir(folder)}
    with pytest.raises(ValueError, match="size"):
        S.main(tiny(tmp_path, num_runs=2, steps=120, size=5))
    with pytest.raises(ValueError, match="steps"):
        S.main(tiny(tmp_path, num_runs=2, steps=130))
    # Dark files copied into a Light folder
    S.main(tiny(tmp_path, num_runs=1, steps=120, light=False))
    dark = tmp_path / "data" / "nx1-dark" / "run_00000.npz"
    os.replace(dark, folder / "run_00000.npz")
    with pytest.raises(ValueError, match="light"):
        S.main(tiny(tmp_path, num_runs=2, steps=120))
    assert sorted(os.listdir(folder)) == sorted(before)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(steps=0), "--steps"),
        (dict(num_runs=0), "--num-runs"),
        (dict(num_shards=2, shard_index=2), "--shard-index"),
        (dict(shard_index=-1), "--shard-index"),
        (dict(size=2), "--size"),
        (dict(log_every=0), "--log-every"),
        (dict(alpha=0.0), "--alpha"),
        (dict(tau=0.0), "--tau"),
        (dict(exploration_bonus=-1.0), "--exploration-bonus"),
        (dict(exploration_bonus=float("inf")), "--exploration-bonus must be a finite number >= 0, got inf"),
        (dict(exploration_bonus=float("nan")), "--exploration-bonus must be a finite number >= 0, got nan"),
        (dict(lr=float("inf")), "--lr must be a finite number > 0, got inf"),
        (dict(lr=float("nan")), "--lr must be a finite number > 0, got nan"),
        (dict(lr=-1e-3), "--lr"),
        (dict(gamma=float("nan")), r"--gamma must be a finite number in \[0, 1\], got nan"),
        (dict(gamma=1.5), "--gamma"),
        (dict(tau=float("inf")), r"--tau must be a finite number in \(0, 1\], got inf"),
        (dict(alpha=float("inf")), "--alpha must be a finite number > 0, got inf"),
        (dict(alpha=float("nan")), "--alpha"),
        (dict(target_entropy_scale=float("nan")), "--target-entropy-scale must be a finite number in"),
        (dict(target_entropy_scale=-0.5), "--target-entropy-scale"),
        (dict(batch_size=0), "--batch-size must be >= 1, got 0"),
        (dict(hidden=0), "--hidden must be >= 1, got 0"),
        (dict(update_every=0), "--update-every must be >= 1, got 0"),
        (dict(group_size=0), "--group-size must be >= 1, got 0"),
        (dict(learning_starts=0), "--learning-starts must be >= 1, got 0"),
        (dict(num_shards=0), "--num-shards must be >= 1, got 0"),
        (dict(size=14), "--size must lie in 3..13"),
    ],
)
def test_bad_flags(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        S.main(tiny(tmp_path, **overrides))
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path):
    """A size no machine holds (issue 23: 80 s, then MemoryError) is one line and exit code 2, before any work."""
    command = [sys.executable, os.path.join(ROOT, "sac_collect.py"), "--num-runs", "1000000000", "--no-cuda"]
    result = subprocess.run(
        command + ["--data-dir", str(tmp_path / "data")], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "sac_collect.py: error: --num-runs must lie in 1..99,999" in result.stderr
    assert os.listdir(tmp_path) == []  # no dataset folder, no TensorBoard run


@pytest.mark.slow
def test_cli_smoke(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "sac_collect.py"),
            "--style",
            "1xn",
            "--light",
            "--steps",
            "150",
            "--size",
            "4",
            "--learning-starts",
            "50",
            "--batch-size",
            "8",
            "--no-progress",
            "--no-cuda",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    history, config = K.load_history(str(tmp_path / "data" / "1xn-light" / "run_00000.npz"))
    assert config["style"] == "1xn" and history["observations"].shape == (150, 8)
    assert '"runs": 1' in result.stdout


def test_every_file_of_the_folder_is_checked(tmp_path, monkeypatch):
    """A 5x5 run among 4x4 runs is refused, though the first file matches (issue 14, case 3)."""
    monkeypatch.chdir(tmp_path)
    S.main(tiny(tmp_path, num_runs=2, steps=120))
    S.main(tiny(tmp_path, num_runs=1, steps=120, size=5, data_dir=str(tmp_path / "other")))
    folder = tmp_path / "data" / "nx1-light"
    os.replace(tmp_path / "other" / "nx1-light" / "run_00000.npz", folder / "run_00002.npz")
    before = sorted(os.listdir(folder))
    with pytest.raises(ValueError, match=r"run_00002\.npz was written with size=5, this command has size=4"):
        S.main(tiny(tmp_path, num_runs=4, steps=120))
    assert sorted(os.listdir(folder)) == before


def test_truncated_file_is_refused_before_any_work_and_regenerated_once_removed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    S.main(tiny(tmp_path, num_runs=3, steps=120))  # groups {0, 1} and {2}
    folder = tmp_path / "data" / "nx1-light"
    original = K.load_history(str(folder / "run_00000.npz"))[0]
    data = (folder / "run_00000.npz").read_bytes()
    (folder / "run_00000.npz").write_bytes(data[: len(data) // 2])  # a copy cut short
    os.remove(folder / "run_00002.npz")  # so that there is a group to compute
    before = (sorted(os.listdir(folder)), sorted(os.listdir(tmp_path / "runs")))
    with pytest.raises(ValueError, match=r"run_00000\.npz.*delete or move it away") as error:
        S.main(tiny(tmp_path, num_runs=3, steps=120))
    assert "\n" not in str(error.value)
    assert (sorted(os.listdir(folder)), sorted(os.listdir(tmp_path / "runs"))) == before  # no group ran
    os.remove(folder / "run_00000.npz")  # as the error says; the rerun completes both groups
    S.main(tiny(tmp_path, num_runs=3, steps=120))
    assert sorted(os.listdir(folder)) == ["run_00000.npz", "run_00001.npz", "run_00002.npz"]
    again = K.load_history(str(folder / "run_00000.npz"))[0]
    for key in K.HISTORY_DTYPES:
        np.testing.assert_array_equal(again[key], original[key])


def random_history(steps, size=4):
    """A history of random actions, as the contract wants it, in a fraction of a second (no SAC)."""
    env = K.KeyDoorVectorEnv(1, size=size, light=True, tasks=K.task_split(size, "train")[:1])
    observations, _ = env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, K.NUM_ACTIONS, steps)
    history = {key: [] for key in K.HISTORY_DTYPES}
    for action in actions:
        history["observations"].append(observations[0])
        history["tasks"].append(env.tasks[0].copy())
        observations, reward, terminated, truncated, _ = env.step(np.array([action]))
        history["actions"].append(action)
        history["rewards"].append(reward[0])
        history["terminations"].append(terminated[0])
        history["truncations"].append(truncated[0])
    return {key: np.array(values) for key, values in history.items()}


def test_a_corrupted_deflate_stream_is_refused_before_any_work(tmp_path, monkeypatch, corrupt_deflate_stream):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "data" / "nx1-light"
    args = tiny(tmp_path, num_runs=1, steps=120)
    config = {field: getattr(S.resolve(tiny(tmp_path, num_runs=1, steps=120)), field) for field in S.DATA_FIELDS}
    K.save_history(str(folder / "run_00000.npz"), random_history(120), dict(config, algorithm="sac", run=0))
    corrupt_deflate_stream(folder / "run_00000.npz")
    with pytest.raises(ValueError, match=r"run_00000\.npz: not a readable .*zlib\.error.*delete or move it") as error:
        S.main(args)
    assert "\n" not in str(error.value)
    assert os.listdir(folder) == ["run_00000.npz"] and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_corrupt_file_is_one_line_on_the_command_line(tmp_path, corrupt_deflate_stream):
    folder = tmp_path / "data" / "nx1-light"
    K.save_history(str(folder / "run_00000.npz"), random_history(200), {"size": 4})
    corrupt_deflate_stream(folder / "run_00000.npz")
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "sac_collect.py"),
            "--light",
            "--steps",
            "100",
            "--data-dir",
            str(tmp_path / "data"),
            "--no-cuda",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "run_00000.npz: not a readable" in result.stderr and "zlib.error" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_unwritable_outputs_are_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stray = tmp_path / "strays" / "nx1-light" / "run_00000.npz"
    stray.mkdir(parents=True)  # a folder named like a run: its write would fail after the collection
    with pytest.raises(ValueError, match="run_00000.npz is not a regular file; move it away"):
        S.main(tiny(tmp_path, data_dir=str(tmp_path / "strays")))
    (tmp_path / "a_file").write_bytes(b"")
    with pytest.raises(
        OSError, match=r"a_file/nx1-light/run_00002.npz: cannot write there \(Not a directory\)"
    ):  # it would lie under a file
        S.main(tiny(tmp_path, data_dir=str(tmp_path / "a_file")))
    with pytest.raises(OSError, match="File name too long"):  # found before the collection, not after it
        S.main(tiny(tmp_path, data_dir=str(tmp_path / ("d" * 300))))
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    (other / "runs").write_bytes(b"")  # TensorBoard's folder is a file
    with pytest.raises(OSError, match="runs/: cannot write"):
        S.main(tiny(other))
    assert not (other / "data").exists()  # checked first: the data folder is not made


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "data" / "nx1-light"
    folder.mkdir(parents=True)
    folder.chmod(0o555)
    try:
        with pytest.raises(OSError, match="cannot write"):
            S.main(tiny(tmp_path))
    finally:
        folder.chmod(0o755)
    assert os.listdir(tmp_path / "runs") == []  # the check's folder, nothing in it


@pytest.mark.slow
@pytest.mark.parametrize("light", [False, True])
def test_torch_env_path_writes_what_the_numpy_env_path_writes(tmp_path, light):
    """Nx1 steps TorchVectorEnv; the numpy env (the path before it) gives bit-identical histories."""
    args = S.resolve(tiny(tmp_path, light=light, size=5, num_runs=3, steps=250))
    fast = S.collect_group(args, [0, 1, 2], torch.device("cpu"), None)
    reference = S.collect_group(args, [0, 1, 2], torch.device("cpu"), None, numpy_env=True)
    for got, want in zip(fast, reference, strict=True):
        assert (want["terminations"] | want["truncations"]).sum() >= 5  # episodes ended: resets compared too
        for key in K.HISTORY_DTYPES:
            assert got[key].dtype == want[key].dtype
            np.testing.assert_array_equal(got[key], want[key])


def test_window_means_match_a_loop_over_episodes():
    env = K.KeyDoorVectorEnv(5, size=3, tasks=K.task_split(3, "train")[:5])
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    steps = [env.step(rng.integers(0, 5, 5))[1:4] for _ in range(300)]
    rewards = np.stack([s[0] for s in steps], axis=1)
    dones = np.stack([s[1] for s in steps], axis=1) | np.stack([s[2] for s in steps], axis=1)
    for start, end in [(0, 100), (100, 200), (37, 300), (250, 251)]:
        means = S.window_means(torch.as_tensor(rewards).to(torch.uint8), torch.as_tensor(dones), start, end)
        for i in range(5):
            returns, ends = K.episode_returns(rewards[i], dones[i])
            inside = returns[(ends >= start) & (ends < end)]
            assert (np.isnan(means[i]) and len(inside) == 0) or means[i] == inside.mean()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graphed_update_matches_eager_on_cuda():
    A = 8  # agents
    B = 32  # batch
    D = 8  # observation features
    args = S.resolve(S.Args(hidden=16, batch_size=B))
    device = torch.device("cuda")
    eager = S.Population(A, D, args, torch.Generator().manual_seed(0), device)
    captured = S.Population(A, D, args, torch.Generator().manual_seed(0), device)
    graphed = S.GraphedUpdate(captured.update)
    for step in range(8):  # 3 warm-up calls, the capture, then replays
        inputs = [t.to(device) for t in batch(A, B, D, step)]
        want = eager.update(*inputs)
        got = graphed(*inputs)
        torch.testing.assert_close(got["qf_loss"], want["qf_loss"])
    assert graphed.graph is not None and not graphed.failed
    for a, b in zip(population_state(eager), population_state(captured), strict=True):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- torchrun: the rank picks the shard
def collected(folder):
    return {name: K.load_history(str(folder / name))[0] for name in sorted(os.listdir(folder))}


def assert_same_files(got, want):
    assert sorted(got) == sorted(want)
    for name in want:
        for key in K.HISTORY_DTYPES:
            np.testing.assert_array_equal(got[name][key], want[name][key], err_msg=f"{name} {key}")


def test_under_torchrun_each_rank_takes_its_shard(tmp_path, monkeypatch):
    """RANK and WORLD_SIZE (what torchrun sets) act as --shard-index and --num-shards: the union of the ranks'
    files equals one process's files."""
    monkeypatch.chdir(tmp_path)
    flags = dict(num_runs=3, steps=120, group_size=1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (1, 0):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        S.main(tiny(tmp_path, **flags))
        if rank == 1:  # groups {0}, {1}, {2}: rank 1 takes the second
            assert sorted(os.listdir(tmp_path / "data" / "nx1-light")) == ["run_00001.npz"]
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("LOCAL_RANK")
    S.main(tiny(tmp_path, data_dir=str(tmp_path / "single"), **flags))
    assert_same_files(collected(tmp_path / "data" / "nx1-light"), collected(tmp_path / "single" / "nx1-light"))


def test_torchrun_and_conflicting_shard_flags_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match="--num-shards 3 --shard-index 0 conflict with torchrun's WORLD_SIZE=2 RANK=1"):
        S.main(tiny(tmp_path, num_shards=3))
    args = S.shard_from_launcher(S.resolve(tiny(tmp_path, num_shards=2, shard_index=1)))  # the same: accepted
    assert (args.num_shards, args.shard_index) == (2, 1)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2 must lie in 0..WORLD_SIZE-1"):
        S.main(tiny(tmp_path))
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ValueError, match="RANK='one' and WORLD_SIZE='2'"):
        S.main(tiny(tmp_path))
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_torchrun_two_processes_write_what_one_process_writes(tmp_path):
    """The real launcher: `torchrun --standalone --nproc_per_node 2 sac_collect.py ...` (two processes, no process
    group) writes the files of one process, array for array."""
    flags = ["--num-runs", "3", "--steps", "100", "--size", "4", "--group-size", "1", "--batch-size", "8"]
    flags += ["--hidden", "8", "--learning-starts", "50", "--log-every", "50", "--no-progress", "--no-cuda"]
    script = os.path.join(ROOT, "sac_collect.py")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    outputs = {}
    for command, data in ((launcher + [script], "two"), ([sys.executable, script], "one")):
        result = subprocess.run(
            command + flags + ["--data-dir", str(tmp_path / data)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        outputs[data] = result.stdout
    assert "in shard 0 of 2" in outputs["two"] and "in shard 1 of 2" in outputs["two"]
    assert_same_files(collected(tmp_path / "two" / "nx1-dark"), collected(tmp_path / "one" / "nx1-dark"))


# ---------------------------------------------------------------- one progress bar over the shard
class RecordingBar:
    """Stands in for tqdm: what main asks of its progress bar."""

    made = []

    def __init__(self, total, initial=0, **kwargs):
        self.total = total
        self.initial = initial
        self.n = initial
        self.descriptions = []
        self.closed = False
        RecordingBar.made.append(self)

    def update(self, n=1):
        self.n += n

    def set_description(self, description):
        self.descriptions.append(description)

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        self.closed = True


def test_one_progress_bar_over_all_groups_starting_at_what_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(S, "tqdm", RecordingBar)
    RecordingBar.made = []
    S.main(tiny(tmp_path, num_runs=3, steps=110, group_size=2))  # groups {0, 1} and {2}
    (bar,) = RecordingBar.made
    assert (bar.total, bar.initial, bar.n) == (3 * 110, 0, 3 * 110) and bar.closed
    assert bar.descriptions == ["runs 0..1", "runs 2..2"]
    os.remove(tmp_path / "data" / "nx1-light" / "run_00000.npz")  # the first group is collected again
    RecordingBar.made = []
    S.main(tiny(tmp_path, num_runs=3, steps=110, group_size=2))
    (bar,) = RecordingBar.made
    assert (bar.total, bar.initial, bar.n) == (3 * 110, 110, 3 * 110)  # a resumed run starts at what is written
    assert bar.descriptions == ["runs 0..1"]


# ---------------------------------------------------------------- sizes no machine holds
@pytest.mark.parametrize(
    "overrides, match",
    [
        # issue 23's case: the default group of 128 runs, 1e9 steps each (an allocator error before)
        (
            dict(num_runs=128, group_size=128, steps=10**9),
            r"--steps 1,000,000,000: a group of 128 runs trained together needs about 11,26\d,\d{3} MB of memory",
        ),
        (dict(style="1xn", num_runs=1, steps=10**11), r"--steps 100,000,000,000: .* lower --steps or --num-runs"),
        # issue 23's other case (80 s, then MemoryError before): beyond five-digit run files
        (dict(num_runs=10**9), r"--num-runs must lie in 1\.\.99,999 \(run files .*\), got 1,000,000,000"),
        (dict(hidden=10**6), r"--hidden 1,000,000: .*most for its networks.* lower --hidden or --group-size"),
        (dict(batch_size=10**10), r"--batch-size 10,000,000,000: .*most for its update"),
    ],
)
def test_sizes_no_machine_holds_are_refused_before_any_work(tmp_path, monkeypatch, overrides, match):
    monkeypatch.chdir(tmp_path)
    start = time.time()
    with pytest.raises(ValueError, match=match) as error:
        S.main(tiny(tmp_path, **overrides))
    assert "\n" not in str(error.value) and time.time() - start < 10
    assert os.listdir(tmp_path) == []


def test_a_group_larger_than_the_free_memory_is_refused(tmp_path, monkeypatch):
    """The same check on ordinary sizes, with the machine's free memory made small."""
    monkeypatch.chdir(tmp_path)
    args = tiny(tmp_path, num_runs=2, steps=2000)
    needed = sum(S.memory_needed(S.resolve(tiny(tmp_path, num_runs=2, steps=2000)), 2).values())
    monkeypatch.setattr(S, "available_memory", lambda: needed - 1)
    with pytest.raises(ValueError, match=r"--steps 2,000: a group of 2 runs .* of memory \(most for its histories\)"):
        S.main(args)
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(S, "available_memory", lambda: None)  # unknown: no refusal
    S.check_memory(S.resolve(tiny(tmp_path, num_runs=2, steps=2000)), 2, torch.device("cpu"))


def test_memory_estimate_covers_what_a_group_holds():
    """The parts grow as they should: histories with the steps and runs, networks with hidden width squared."""
    args = S.resolve(S.Args(num_runs=4, steps=1000, light=True))
    parts = S.memory_needed(args, 4)
    assert parts["replay"] == 4 * 1000 * 10  # 10 bytes per agent-step: the compact codes
    # the histories as save_history receives them: their own arrays, counted here from real ones
    history = random_history(1000)
    arrays = {key: np.asarray(history[key], dtype=dtype) for key, dtype in K.HISTORY_DTYPES.items()}
    assert parts["histories"] == 4 * sum(array.nbytes for array in arrays.values())
    wider = S.memory_needed(S.resolve(S.Args(num_runs=4, steps=1000, light=True, hidden=128)), 4)
    assert 3.5 < wider["networks"] / parts["networks"] < 4.0


def test_a_full_disk_ends_in_one_line_keeping_the_files_written(tmp_path, monkeypatch):
    """The operating system's ENOSPC while a run's file is written ends the command in one line naming the file;
    the files written before stay, no temp file is left, and the rerun completes the folder."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "data" / "nx1-light"
    fsync = os.fsync

    def fsync_on_a_disk_that_filled(fd):
        if (folder / "run_00000.npz").exists():  # the disk filled after the first file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(K.os, "fsync", fsync_on_a_disk_that_filled)
    with pytest.raises(OSError, match=r"run_00001\.npz: the disk is full; it was left as it was") as error:
        S.main(tiny(tmp_path, num_runs=3, steps=120))  # groups {0, 1} and {2}
    assert "\n" not in str(error.value)
    assert os.listdir(folder) == ["run_00000.npz"]
    mtime = os.path.getmtime(folder / "run_00000.npz")
    monkeypatch.setattr(K.os, "fsync", fsync)  # space freed
    S.main(tiny(tmp_path, num_runs=3, steps=120))
    assert sorted(os.listdir(folder)) == ["run_00000.npz", "run_00001.npz", "run_00002.npz"]
    assert os.path.getmtime(folder / "run_00000.npz") == mtime  # kept, not written again


def test_shard_groups_are_disjoint_and_cover_every_run():
    for num_runs in (1, 5, 7, 8, 9):
        for group_size in (1, 2, 3, 8):
            for num_shards in (1, 2, 3, 5):
                every = []
                for shard_index in range(num_shards):
                    args = S.Args(num_runs=num_runs, group_size=group_size, num_shards=num_shards)
                    args.shard_index = shard_index
                    every += [run for group in S.shard_groups(args) for run in group]
                assert sorted(every) == list(range(num_runs))  # disjoint and covering


def test_shard_runs_written_reads_the_folder_not_the_shard(tmp_path):
    for name in ["run_00000.npz", "run_00001.npz", "run_00003.npz", "run_00009.npz", "run_x.npz", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    args = S.Args(num_runs=6, group_size=1, num_shards=2, shard_index=1)
    assert sorted(S.shard_runs_written(args, str(tmp_path))) == [1, 3]  # run 9 lies beyond --num-runs
    assert S.shard_runs_written(args, str(tmp_path / "missing")) == set()


def test_nx1_runs_beyond_the_train_tasks_take_them_again():
    args = S.resolve(S.Args(size=3, num_runs=100))
    train = K.task_split(3, "train")
    tasks = S.run_tasks(args)
    assert len(train) < 100 and tasks.shape == (100, 4)
    assert len({tuple(task) for task in tasks[: len(train)]}) == len(train)  # every train task once, first
    np.testing.assert_array_equal(tasks[len(train) :], tasks[: 100 - len(train)])
    np.testing.assert_array_equal(S.run_tasks(args, [3, 70]), tasks[[3, 70]])  # a group's tasks alone


def test_available_memory_is_at_most_the_physical_memory(monkeypatch):
    """What sac_collect.py sizes its replay against: MemAvailable, or where the host has no
    /proc/meminfo, its physical memory."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    available = S.available_memory()
    assert isinstance(available, int) and 0 < available <= physical
    real_open = open

    def open_without_meminfo(path, *args, **kwargs):
        if path == "/proc/meminfo":
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", open_without_meminfo)
    assert S.available_memory() == physical
