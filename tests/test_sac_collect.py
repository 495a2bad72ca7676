"""sac_collect.py: the files it writes, agent independence, resume, sharding and bad input."""

import os
import socket
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
        "charts/solved_fraction",
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
        states, tasks = codec.encode_states(torch.as_tensor(obs)), codec.encode_tasks(env.tasks)
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
    A, B, D = 4, 32, 8
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
                observations[0], rewards[0] = torch.rand(B, D), rewards[0] + 5.0
                actions[0] = (actions[0] + 1) % 5
            pop.update(observations, actions, rewards, next_observations, dones)
            pop.act(observations[:, 0], torch.rand(A))
        return pop

    base, perturbed = population_state(train(False)), population_state(train(True))
    for b, p in zip(base, perturbed):
        if b.shape[0] == 2 * A:  # critics: agents 1.. of both twins
            b, p = torch.cat([b[1:A], b[A + 1 :]]), torch.cat([p[1:A], p[A + 1 :]])
            assert torch.equal(b, p)
        else:
            assert torch.equal(b[1:], p[1:])
            assert not torch.equal(b[:1], p[:1])


def test_population_of_one_matches_agent_in_population():
    """An agent's update does not depend on which population it sits in."""
    B, D = 16, 4
    args = S.resolve(S.Args(hidden=8, batch_size=B))
    pop = S.Population(3, D, args, torch.Generator().manual_seed(0), torch.device("cpu"))
    alone = S.Population(1, D, args, torch.Generator().manual_seed(1), torch.device("cpu"))
    with torch.no_grad():
        for src, dst in zip(pop.actor, alone.actor):
            dst.copy_(src[1:2])
        for src, dst in zip(pop.critic, alone.critic):
            dst.copy_(torch.stack([src[1], src[3 + 1]]))
        for src, dst in zip(pop.critic_target, alone.critic_target):
            dst.copy_(torch.stack([src[1], src[3 + 1]]))
    observations, actions, rewards, next_observations, dones = batch(3, B, D, 0)
    out_pop = pop.update(observations, actions, rewards, next_observations, dones)
    out_alone = alone.update(observations[1:2], actions[1:2], rewards[1:2], next_observations[1:2], dones[1:2])
    torch.testing.assert_close(out_pop["qf_loss"][1:2], out_alone["qf_loss"], rtol=1e-5, atol=1e-6)
    for src, dst in zip(pop.actor, alone.actor):
        torch.testing.assert_close(src[1:2], dst, rtol=1e-5, atol=1e-6)


def test_resume_skips_finished_and_rewrites_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = tiny(tmp_path, num_runs=3, steps=200)
    S.main(args)
    folder = tmp_path / "data" / "nx1-light"
    first = {n: K.load_history(str(folder / n))[0] for n in os.listdir(folder)}
    mtimes = {n: os.path.getmtime(folder / n) for n in os.listdir(folder)}
    os.remove(folder / "run_00001.npz")  # a group killed while writing its files
    (folder / ".tmp-stale.part").write_bytes(b"half")  # and a temp file from the kill
    S.main(tiny(tmp_path, num_runs=3, steps=200))
    names = sorted(n for n in os.listdir(folder) if n.endswith(".npz"))
    assert names == ["run_00000.npz", "run_00001.npz", "run_00002.npz"]
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
    ],
)
def test_bad_flags(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        S.main(tiny(tmp_path, **overrides))
    assert not (tmp_path / "data").exists()


def test_cli_errors_are_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "sac_collect.py"), "--steps", "0", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--steps must be >= 1" in result.stderr


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


def test_corrupt_file_is_one_line_on_the_command_line(tmp_path):
    folder = tmp_path / "data" / "nx1-light"
    folder.mkdir(parents=True)
    (folder / "run_00000.npz").write_bytes(b"PK\x03\x04 not a zip")
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
    assert "run_00000.npz" in result.stderr and not (tmp_path / "runs").exists()


def test_stale_parts_of_killed_writers_are_removed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "data" / "nx1-light"
    folder.mkdir(parents=True)
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()
    host = socket.gethostname()
    dead = folder / f"{K.PART_PREFIX}{host}-{killed.pid}-abc.part"  # a writer of this host that no longer runs
    old = folder / f"{K.PART_PREFIX}otherhost-1-xyz.part"  # another host's, older than an hour
    live = folder / f"{K.PART_PREFIX}{host}-{os.getpid()}-def.part"  # a writer still at work
    for part in (dead, old, live):
        part.write_bytes(b"half")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    S.main(tiny(tmp_path, num_runs=1, steps=120))
    assert not dead.exists() and not old.exists() and live.exists()


def test_unwritable_outputs_are_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_bytes(b"")
    with pytest.raises(OSError, match="cannot write"):  # the dataset folder would lie under a file
        S.main(tiny(tmp_path, data_dir=str(tmp_path / "a_file")))
    (tmp_path / "runs").write_bytes(b"")  # TensorBoard's folder is a file
    with pytest.raises(OSError, match="runs: cannot write"):
        S.main(tiny(tmp_path))
    assert not (tmp_path / "data").exists()  # a refused run creates nothing


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
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("light", [False, True])
def test_torch_env_path_writes_what_the_numpy_env_path_writes(tmp_path, light):
    """Nx1 steps TorchVectorEnv; the numpy env (the path before it) gives bit-identical histories."""
    args = S.resolve(tiny(tmp_path, light=light, size=5, num_runs=3, steps=400))
    fast = S.collect_group(args, [0, 1, 2], torch.device("cpu"), None)
    reference = S.collect_group(args, [0, 1, 2], torch.device("cpu"), None, numpy_env=True)
    for got, want in zip(fast, reference):
        assert (want["terminations"] | want["truncations"]).sum() >= 8
        for key in K.HISTORY_DTYPES:
            assert got[key].dtype == want[key].dtype
            np.testing.assert_array_equal(got[key], want[key])


def test_window_means_match_a_loop_over_episodes():
    env = K.KeyDoorVectorEnv(5, size=3, tasks=K.task_split(3, "train")[:5])
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    steps = [env.step(rng.integers(0, 5, 5))[1:4] for _ in range(300)]
    rewards, dones = (np.stack([s[i] for s in steps], axis=1) for i in (0, 1))
    dones = dones | np.stack([s[2] for s in steps], axis=1)
    for start, end in [(0, 100), (100, 200), (37, 300), (250, 251)]:
        means = S.window_means(torch.as_tensor(rewards).to(torch.uint8), torch.as_tensor(dones), start, end)
        for i in range(5):
            returns, ends = K.episode_returns(rewards[i], dones[i])
            inside = returns[(ends >= start) & (ends < end)]
            assert (np.isnan(means[i]) and len(inside) == 0) or means[i] == inside.mean()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graphed_update_matches_eager_on_cuda():
    A, B, D = 8, 32, 8
    args = S.resolve(S.Args(hidden=16, batch_size=B))
    device = torch.device("cuda")
    eager, captured = (S.Population(A, D, args, torch.Generator().manual_seed(0), device) for _ in range(2))
    graphed = S.GraphedUpdate(captured.update)
    for step in range(8):  # 3 warm-up calls, the capture, then replays
        inputs = [t.to(device) for t in batch(A, B, D, step)]
        want = eager.update(*inputs)
        got = graphed(*inputs)
        torch.testing.assert_close(got["qf_loss"], want["qf_loss"])
    assert graphed.graph is not None and not graphed.failed
    for a, b in zip(population_state(eager), population_state(captured)):
        torch.testing.assert_close(a, b)
