"""Rules of Key-To-Door, the vector env, the task split, and the `.npz` contract."""

import errno
import json
import os
import random
import shutil
import sys
import zipfile
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import keydoor_env as K

STAY, RIGHT, LEFT, UP, DOWN = range(5)


def make(task=(2, 0, 2, 2), size=5, light=False):
    env = K.KeyDoorEnv(size=size, light=light, task=task)
    obs, info = env.reset(seed=0)
    return env, obs


def walk(env, actions):
    out = []
    for a in actions:
        out.append(env.step(a))
    return out


# ---------------------------------------------------------------- rules, step by step
def test_start_observation_and_layout():
    env, obs = make(task=(2, 0, 2, 2), size=5, light=True)
    assert obs.dtype == np.float32 and obs.shape == (8,)
    np.testing.assert_allclose(obs, [0, 0, 0, 0, 0.5, 0, 0.5, 0.5])
    dark, dobs = make(task=(2, 0, 2, 2), size=5, light=False)
    np.testing.assert_array_equal(obs[:4], dobs)


def test_moves_walls_and_stay():
    env, obs = make()
    obs, r, term, trunc, _ = env.step(LEFT)  # wall at x = 0
    assert obs[:2].tolist() == [0, 0] and r == 0
    obs, *_ = env.step(DOWN)  # wall at y = 0
    assert obs[:2].tolist() == [0, 0]
    obs, *_ = env.step(UP)
    assert obs[:2].tolist() == [0, 0.25]
    obs, *_ = env.step(STAY)
    assert obs[:2].tolist() == [0, 0.25]
    obs, *_ = env.step(RIGHT)
    assert obs[:2].tolist() == [0.25, 0.25]
    for _ in range(10):
        obs, *_ = env.step(RIGHT)
    assert obs[:2].tolist() == [1.0, 0.25]  # wall at x = size - 1
    for _ in range(10):
        obs, *_ = env.step(UP)
    assert obs[:2].tolist() == [1.0, 1.0]
    assert obs[3] == pytest.approx(25 / 50)


def test_key_reward_once_then_door_terminates():
    env, _ = make(task=(2, 0, 2, 2))
    (_, r1, *_), (obs, r2, term, trunc, _) = walk(env, [RIGHT, RIGHT])
    assert (r1, r2) == (0, 1) and obs[2] == 1 and not term and not trunc
    # leave and re-enter the key cell: no second reward
    (_, r3, *_), (_, r4, *_), (_, r5, *_) = walk(env, [LEFT, RIGHT, STAY])
    assert (r3, r4, r5) == (0, 0, 0)
    (_, r6, t6, *_), (_, r7, t7, tr7, _) = walk(env, [UP, UP])
    assert (r6, t6) == (0, False) and (r7, t7, tr7) == (1, True, False)


def test_door_without_key_does_nothing():
    env, _ = make(task=(4, 4, 1, 0))
    obs, r, term, trunc, _ = env.step(RIGHT)
    assert r == 0 and not term and obs[2] == 0
    obs, r, term, trunc, _ = env.step(STAY)  # staying on the door without the key
    assert r == 0 and not term


def test_truncation_at_exactly_step_50():
    env, _ = make()
    for t in range(1, K.EPISODE_STEPS + 1):
        obs, r, term, trunc, _ = env.step(STAY)
        assert not term
        assert trunc == (t == K.EPISODE_STEPS), t
        assert obs[3] == pytest.approx(t / K.EPISODE_STEPS)


def test_termination_on_step_50_is_not_truncation():
    env, _ = make(task=(1, 0, 2, 0))
    for _ in range(48):
        env.step(STAY)
    _, r, term, trunc, _ = env.step(RIGHT)
    assert r == 1 and not term and not trunc
    _, r, term, trunc, _ = env.step(RIGHT)
    assert r == 1 and term and not trunc


def test_single_env_keeps_its_state_after_the_end():
    """No autoreset: after the door the env still shows the door's cell (replays read the arrival cell there)."""
    env, _ = make(task=(1, 0, 2, 0))
    env.step(RIGHT)
    obs, r, term, trunc, _ = env.step(RIGHT)
    assert (r, term, trunc) == (1.0, True, False) and obs[:3].tolist() == [0.5, 0, 1] and env._pos == [2, 0]


def test_fixed_mode_keeps_task_and_resample_mode_draws():
    env = K.KeyDoorEnv(size=9)
    env.reset(seed=3)
    task = env.task.copy()
    for _ in range(5):
        env.reset()
        np.testing.assert_array_equal(env.task, task)
    env.reset(options={"task": (3, 4, 5, 6)})
    env.reset()
    assert env.task.tolist() == [3, 4, 5, 6]
    env = K.KeyDoorEnv(size=9, resample=True)
    seen = {tuple(env.reset(seed=s)[1]["task"]) for s in range(20)}
    assert len(seen) > 10
    train = {tuple(t) for t in K.task_split(9, "train")}
    assert seen <= train


def test_reset_is_seeded():
    a = K.KeyDoorEnv(resample=True)
    b = K.KeyDoorEnv(resample=True)
    a.reset(seed=7)
    b.reset(seed=7)
    for _ in range(5):
        np.testing.assert_array_equal(a.reset()[1]["task"], b.reset()[1]["task"])


@pytest.mark.parametrize("env_id", ["KeyDoor-Dark-v0", "KeyDoor-Light-v0"])
def test_gymnasium_make_and_check_env(env_id):
    env = gym.make(env_id, size=6)
    check_env(env.unwrapped, skip_render_check=False)
    obs, _ = env.reset(seed=0)
    assert obs.shape == ((8,) if "Light" in env_id else (4,))


def test_render_ansi():
    env = K.KeyDoorEnv(size=4, task=(1, 1, 3, 3), render_mode="ansi")
    env.reset(seed=0)
    text = env.render()
    assert text.splitlines()[0] == "...D" and text.splitlines()[3] == "A..."


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "task, match",
    [
        ((5, 0, 1, 1), "outside"),
        ((-1, 0, 1, 1), "outside"),
        ((2, 2, 2, 2), "same cell"),
        ((0, 0, 1, 1), "start cell"),
        ((1, 1, 0, 0), "start cell"),
        ((1, 2, 3), "4 integers"),
        ((1.5, 2, 3, 3), "4 integers"),
    ],
)
def test_bad_tasks(task, match):
    with pytest.raises(ValueError, match=match):
        K.KeyDoorEnv(size=5, task=task)
    env = K.KeyDoorEnv(size=5)
    with pytest.raises(ValueError, match=match):
        env.reset(options={"task": task})
    with pytest.raises(ValueError, match=match if len(task) == 4 else "shape"):
        K.KeyDoorVectorEnv(1, size=5, tasks=[task])


@pytest.mark.parametrize("size", [2, 0, -3, 2.5])
def test_bad_size(size):
    with pytest.raises(ValueError, match="size"):
        K.KeyDoorEnv(size=size)
    with pytest.raises(ValueError, match="size"):
        K.KeyDoorVectorEnv(2, size=size)


def test_bad_actions():
    env, _ = make()
    for action in (5, -1, 1.0):
        with pytest.raises(ValueError, match="action"):
            env.step(action)
    venv = K.KeyDoorVectorEnv(3, size=5)
    venv.reset(seed=0)
    for actions in ([0, 1, 5], [0, -1, 2], [0, 1], np.zeros(3)):
        with pytest.raises(ValueError, match="actions"):
            venv.step(np.asarray(actions))


def test_bad_split_and_num_envs():
    with pytest.raises(ValueError, match="split"):
        K.KeyDoorEnv(split="heldout")
    with pytest.raises(ValueError, match="num_envs"):
        K.KeyDoorVectorEnv(0)


# ---------------------------------------------------------------- the splits
def held_out(size):
    return np.concatenate([K.task_split(size, "validation"), K.task_split(size, "test")])


@pytest.mark.parametrize("size", [3, 4, 6, 9])
def test_split_disjoint_deterministic_covering(size):
    train, validation, test = (K.task_split(size, s) for s in ("train", "validation", "test"))
    every = {tuple(t) for t in K.all_tasks(size)}
    sets = [{tuple(t) for t in split} for split in (train, validation, test)]
    assert [len(s) for s in sets] == [len(train), len(validation), len(test)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert sets[0] | sets[1] | sets[2] == every
    assert len(every) == (size * size - 1) * (size * size - 2)
    assert len(validation) + len(test) == round(0.1 * len(every))
    assert len(validation) == min(20, (len(validation) + len(test)) // 2) and len(test) >= len(validation)
    for t in every:
        K.validate_task(np.array(t), size)
    K._splits.cache_clear()
    for name, split in zip(("train", "validation", "test"), (train, validation, test), strict=True):
        np.testing.assert_array_equal(split, K.task_split(size, name))


def test_split_is_pinned():
    # Guards the splits against silent change: the same on every machine and numpy version.
    assert len(held_out(9)) == 632 and len(K.task_split(9, "validation")) == 20
    first = sorted(map(tuple, held_out(9).tolist()))[:3]
    assert [list(t) for t in first] == PINNED_9x9_FIRST_HELD_OUT_TASKS
    assert K.task_split(9, "validation")[:3].tolist() == PINNED_9x9_FIRST_VALIDATION_TASKS


PINNED_9x9_FIRST_HELD_OUT_TASKS = [[0, 1, 0, 8], [0, 1, 2, 4], [0, 1, 3, 0]]
PINNED_9x9_FIRST_VALIDATION_TASKS = [[3, 2, 1, 8], [0, 8, 8, 1], [1, 8, 1, 4]]


def test_split_is_read_only():
    with pytest.raises(ValueError):
        K.task_split(5, "train")[0, 0] = 1


def test_eval_tasks():
    validation = K.eval_tasks(9, "validation", 20, seed=0)
    np.testing.assert_array_equal(validation, K.task_split(9, "validation"))  # fixed, whatever the seed
    np.testing.assert_array_equal(K.eval_tasks(9, "validation", 5, seed=3), validation[:5])
    tasks = K.eval_tasks(9, "test", 100, seed=0)
    test = {tuple(t) for t in K.task_split(9, "test")}
    assert len({tuple(t) for t in tasks}) == 100 and {tuple(t) for t in tasks} <= test
    np.testing.assert_array_equal(tasks, K.eval_tasks(9, "test", 100, seed=0))
    assert not np.array_equal(tasks, K.eval_tasks(9, "test", 100, seed=1))
    assert len(K.eval_tasks(9, "test", 612, seed=0)) == 612
    for split, num in (("test", 613), ("validation", 21), ("test", 0), ("train", 5)):
        with pytest.raises(ValueError, match="split|holds"):
            K.eval_tasks(9, split, num, seed=0)


# ---------------------------------------------------------------- the vector env
@pytest.mark.parametrize("light", [False, True])
def test_vector_env_matches_single_envs(light):
    """Step for step on random actions, across autoresets, in fixed and resample modes."""
    n = 8
    size = 4
    seed = 11
    resample = np.array([i % 2 == 0 for i in range(n)])  # the others keep the task drawn at the first reset
    venv = K.KeyDoorVectorEnv(n, size=size, light=light, resample=resample)
    singles = [K.KeyDoorEnv(size=size, light=light, resample=bool(resample[i])) for i in range(n)]
    vobs, _ = venv.reset(seed=seed, options=None)
    sobs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(singles)])
    np.testing.assert_array_equal(vobs, sobs)
    rng = np.random.default_rng(0)
    dones = 0
    for _ in range(400):
        actions = rng.integers(0, 5, n)
        vobs, vr, vterm, vtrunc, vinfo = venv.step(actions)
        for i, env in enumerate(singles):
            obs, r, term, trunc, _ = env.step(int(actions[i]))
            assert (r, term, trunc) == (vr[i], vterm[i], vtrunc[i])
            if term or trunc:
                dones += 1
                assert vinfo["_final_obs"][i]
                np.testing.assert_array_equal(vinfo["final_obs"][i], obs)
                obs, _ = env.reset()
            np.testing.assert_array_equal(vobs[i], obs)
            np.testing.assert_array_equal(venv.tasks[i], env.task)
    assert dones > 3 * n  # autoresets were exercised


def test_vector_env_given_tasks_and_partial_reset():
    tasks = K.task_split(5, "test")[:3]
    venv = K.KeyDoorVectorEnv(3, size=5, tasks=tasks)
    venv.reset(seed=0)
    np.testing.assert_array_equal(venv.tasks, tasks)
    for _ in range(3):
        venv.step(np.full(3, UP))
    new = K.task_split(5, "test")[3:6]
    obs, _ = venv.reset(options={"tasks": new, "reset_mask": np.array([True, False, False])})
    assert obs[0, 1] == 0 and obs[1, 1] == 0.75 and obs[0, 3] == 0 and obs[1, 3] == 3 / 50
    np.testing.assert_array_equal(venv.tasks, np.concatenate([new[:1], tasks[1:]]))


def test_vector_env_spaces_and_step_contract():
    venv = K.KeyDoorVectorEnv(4, size=5, light=True)
    assert venv.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    assert venv.observation_space.shape == (4, 8) and venv.single_action_space.n == 5
    obs, _ = venv.reset(seed=1)
    assert obs.dtype == np.float32 and venv.observation_space.contains(obs)
    for _ in range(K.EPISODE_STEPS - 1):
        obs, rewards, term, trunc, infos = venv.step(np.zeros(4, dtype=np.int64))
    assert "final_obs" not in infos and rewards.dtype == np.float32
    obs, rewards, term, trunc, infos = venv.step(np.zeros(4, dtype=np.int64))
    assert trunc.all() and not term.any() and infos["_final_obs"].all()
    assert (infos["final_obs"][:, 3] == 1.0).all() and (obs[:, 3] == 0).all()


def test_step_before_reset_fails():
    with pytest.raises(RuntimeError, match="reset"):
        K.KeyDoorVectorEnv(2).step(np.zeros(2, dtype=np.int64))
    with pytest.raises(RuntimeError, match="reset"):
        K.KeyDoorEnv().step(0)


# ---------------------------------------------------------------- the .npz contract
def random_history(steps=120, light=True, seed=0):
    venv = K.KeyDoorVectorEnv(1, size=4, light=light)
    obs, _ = venv.reset(seed=seed)
    rng = np.random.default_rng(seed)
    hist = {k: [] for k in K.HISTORY_DTYPES}
    for _ in range(steps):
        a = rng.integers(0, 5, 1)
        hist["observations"].append(obs[0])
        hist["tasks"].append(venv.tasks[0].copy())
        obs, r, term, trunc, _ = venv.step(a)
        hist["actions"].append(a[0])
        hist["rewards"].append(r[0])
        hist["terminations"].append(term[0])
        hist["truncations"].append(trunc[0])
    return {k: np.array(v) for k, v in hist.items()}


def test_history_round_trip(tmp_path):
    hist = random_history()
    config = {"size": 4, "light": True, "style": "nx1", "seed": 0, "run": 0, "algorithm": "random"}
    path = tmp_path / "run_00000.npz"
    K.save_history(str(path), hist, config)
    loaded, loaded_config = K.load_history(str(path))
    assert loaded_config == config
    for key, dtype in K.HISTORY_DTYPES.items():
        assert loaded[key].dtype == dtype
        np.testing.assert_array_equal(loaded[key], hist[key])
    assert [p.name for p in tmp_path.iterdir()] == ["run_00000.npz"]  # no temp file left
    returns, ends = K.episode_returns(loaded["rewards"], loaded["terminations"] | loaded["truncations"])
    assert len(returns) >= 2 and ends[-1] < len(hist["rewards"])


def test_history_value_checks(tmp_path):
    hist = random_history()
    for key, value, match in (
        ("actions", 5, "actions outside"),
        ("actions", -1, "actions outside"),
        ("rewards", 0.5, "rewards other"),
        ("observations", 1.5, "outside"),
        ("observations", np.nan, "NaN"),
        ("tasks", 4, "outside the 4x4 grid"),
        ("tasks", -1, "outside the 4x4 grid"),
        ("tasks", "key on door", "key on its door"),
    ):
        bad = {k: v.copy() for k, v in hist.items()}
        if value == "key on door":
            bad[key][3, 2:] = bad[key][3, :2]
        else:
            bad[key][3] = value
        with pytest.raises(ValueError, match=match):
            K.save_history(str(tmp_path / "bad.npz"), bad, {"size": 4})
    all_nan = dict(hist, observations=np.full_like(hist["observations"], np.nan))
    with pytest.raises(ValueError, match="NaN"):
        K.save_history(str(tmp_path / "bad.npz"), all_nan, {"size": 4})
    assert not os.path.exists(tmp_path / "bad.npz")


def test_a_bad_file_is_named_when_loaded(tmp_path):
    hist = random_history()
    bad = dict(hist, observations=np.full_like(hist["observations"], np.nan))
    np.savez(tmp_path / "run_00003.npz", **bad, config=np.array('{"size": 4}'))
    with pytest.raises(ValueError, match="run_00003.npz.*NaN"):
        K.load_history(str(tmp_path / "run_00003.npz"))


def test_stale_parts_of_dead_writers_are_removed(tmp_path):
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    stale = tmp_path / f".tmp-{host}-{int(dead.stdout)}-abc.part"
    mine = tmp_path / f".tmp-{host}-{os.getpid()}-def.part"  # a live writer's: kept
    old = tmp_path / ".tmp-otherhost-1-ghi.part"  # another host's, an hour old: removed
    fresh = tmp_path / ".tmp-otherhost-2-jkl.part"  # another host's, recent: kept
    for path in (stale, mine, old, fresh):
        path.write_bytes(b"partial")
    os.utime(old, (0, 0))
    (tmp_path / "run_00000.npz").write_bytes(b"kept")
    assert sorted(K.remove_stale_parts(str(tmp_path))) == sorted([str(stale), str(old)])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, fresh.name, "run_00000.npz"])
    assert K.remove_stale_parts(str(tmp_path / "missing")) == []


def test_check_writable_and_history_paths(tmp_path):
    assert K.check_writable(str(tmp_path / "a" / "b")) == str(tmp_path / "a" / "b")
    assert os.listdir(tmp_path) == []  # a check creates nothing
    (tmp_path / "a").mkdir()
    if os.geteuid() != 0:  # root writes anywhere
        readonly = tmp_path / "ro"
        readonly.mkdir(mode=0o500)
        with pytest.raises(OSError, match="cannot write"):
            K.check_writable(str(readonly))
    (tmp_path / "a_file").write_bytes(b"")
    with pytest.raises(OSError, match="a_file is a file, not a folder"):
        K.check_writable(str(tmp_path / "a_file" / "x" / "y"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        K.history_paths(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no .npz"):
        K.history_paths(str(tmp_path / "a"))
    for name in ("run_00001.npz", "run_00000.npz", ".tmp-x.npz", "notes.txt"):
        (tmp_path / "a" / name).write_bytes(b"")
    assert [os.path.basename(p) for p in K.history_paths(str(tmp_path / "a"))] == ["run_00000.npz", "run_00001.npz"]


@pytest.mark.parametrize("light", [False, True])
def test_torch_env_equals_numpy_env_step_for_step(light):
    tasks = K.task_split(5, "train")[::7][:32]
    numpy_env = K.KeyDoorVectorEnv(len(tasks), size=5, light=light, tasks=tasks)
    observations, _ = numpy_env.reset(seed=0)
    torch_env = K.TorchVectorEnv(tasks, 5, light)
    np.testing.assert_array_equal(torch_env.reset().numpy(), observations)
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(600):
        actions = rng.integers(0, 5, len(tasks))
        observations, rewards, terminations, truncations, infos = numpy_env.step(actions)
        outputs = torch_env.step(torch.as_tensor(actions))
        expected = (observations, rewards, terminations, truncations, K.final_observations(observations, infos))
        for got, want in zip(outputs, expected, strict=True):
            assert got.numpy().dtype == want.dtype
            np.testing.assert_array_equal(got.numpy(), want)
        ends += terminations.sum()
    assert ends > 0  # the door was reached, so the reset path was compared too
    with pytest.raises(ValueError, match="outside"):
        K.TorchVectorEnv([[0, 9, 1, 1]], 5, light)


def test_stream_episodes_and_early_return():
    rewards = np.array([[0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0]], dtype=np.float32)
    dones = np.array([[0, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0]], dtype=bool)
    episodes = K.stream_episodes(rewards, dones)
    assert episodes["env"].tolist() == [0, 0] and episodes["return"].tolist() == [2, 0]
    assert episodes["end_step"].tolist() == [3, 6]
    early = K.early_return(episodes, 2, steps=3)
    assert early[0] == 2 and np.isnan(early[1])
    short = K.stream_episodes(rewards, dones, lengths=np.array([3, 6]))
    assert short["end_step"].tolist() == [3]


def test_obs_scale_decodes_observations_exactly():
    env = K.KeyDoorVectorEnv(4, size=7, light=True, tasks=K.task_split(7, "train")[:4])
    observations, _ = env.reset(seed=0)
    for _ in range(30):
        observations, *_ = env.step(np.random.default_rng(0).integers(0, 5, 4))
        codes = np.rint(observations * K.obs_scale(7, 8))
        np.testing.assert_array_equal(
            (torch.as_tensor(codes).float() / torch.as_tensor(K.obs_scale(7, 8))).numpy(), observations
        )


def test_history_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        K.load_history(str(tmp_path / "missing.npz"))
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable"):
        K.load_history(str(bad))
    hist = random_history()
    short = dict(hist, actions=hist["actions"][:-1])
    with pytest.raises(ValueError, match="shape"):
        K.save_history(str(tmp_path / "x.npz"), short, {"size": 4})
    assert not os.path.exists(tmp_path / "x.npz")
    np.savez(tmp_path / "noconfig.npz", **hist)
    with pytest.raises(ValueError, match="config"):
        K.load_history(str(tmp_path / "noconfig.npz"))
    np.savez(tmp_path / "badjson.npz", **hist, config=np.array("{oops"))
    with pytest.raises(ValueError, match="JSON"):
        K.load_history(str(tmp_path / "badjson.npz"))
    np.savez(tmp_path / "pickled.npz", **hist, config=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="not a readable"):
        K.load_history(str(tmp_path / "pickled.npz"))


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def failing(f):
        f.write(b"partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        K.atomic_write(str(path), failing)
    assert path.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


def test_written_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        K.save_history(str(tmp_path / "a.npz"), random_history(), {"size": 4})
    finally:
        os.umask(umask)
    assert (os.stat(tmp_path / "a.npz").st_mode & 0o777) == 0o644


def test_config_is_json_string(tmp_path):
    K.save_history(str(tmp_path / "a.npz"), random_history(), {"size": 4})
    with np.load(tmp_path / "a.npz", allow_pickle=False) as data:
        assert json.loads(str(data["config"])) == {"size": 4}


def test_atomic_write_on_a_full_disk_names_path_bytes_and_free_space(tmp_path):
    """ENOSPC from the writer: one line naming the file, what was written and what is free; the old file kept."""
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old")

    def fills_the_disk(f):
        f.write(b"x" * 5000)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as error:
        K.atomic_write(str(path), fills_the_disk)
    message = str(error.value)
    assert error.value.errno == errno.ENOSPC and "\n" not in message
    assert message.startswith(f"{path}: the disk is full") and "5.0 kB written" in message
    assert f"free in {tmp_path}" in message and "the earlier file is kept" in message
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["checkpoint.pt"]  # no .part left


def test_atomic_write_names_a_full_disk_behind_torch_save(tmp_path, monkeypatch):
    """torch.save's zip writer turns the file's ENOSPC into a RuntimeError; a bare one counts when the disk is full."""
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old")
    big = {"weights": torch.zeros(100_000)}

    class FullDisk:
        """A file that takes 3,000 bytes, then fails as a full disk does."""

        def __init__(self, f):
            self.f = f

        def write(self, data):
            if self.f.tell() + len(data) > 3000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def flush(self):
            self.f.flush()

    def save(f):
        torch.save(big, FullDisk(f))

    with pytest.raises(OSError, match=r"checkpoint\.pt: the disk is full") as error:
        K.atomic_write(str(path), save)
    assert isinstance(error.value.__cause__, RuntimeError)  # what torch raised
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["checkpoint.pt"]

    def torch_says_write_failed(f):
        f.write(b"x" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed: file write failed")

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(K.shutil, "disk_usage", lambda folder: usage._replace(free=4096))
    with pytest.raises(OSError, match=r"checkpoint\.pt: the disk is full .*4\.1 kB free in") as error:
        K.atomic_write(str(path), torch_says_write_failed)
    assert error.value.errno == errno.ENOSPC and "\n" not in str(error.value)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["checkpoint.pt"]
    # with room on the disk the same error is the writer's own, and passes unchanged
    monkeypatch.setattr(K.shutil, "disk_usage", lambda folder: usage._replace(free=10**12))
    with pytest.raises(RuntimeError, match="file write failed"):
        K.atomic_write(str(path), torch_says_write_failed)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["checkpoint.pt"]


def test_a_new_file_on_a_full_disk_says_nothing_was_written(tmp_path, monkeypatch):
    def fills_the_disk(f):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    with pytest.raises(OSError, match=r"new\.npz: the disk is full \(0 B written.*nothing was written"):
        K.atomic_write(str(tmp_path / "new.npz"), fills_the_disk)
    assert os.listdir(tmp_path) == []

    def no_room_for_the_temp_file(name, mode):
        raise OSError(errno.ENOSPC, "No space left on device", name)

    monkeypatch.setattr(K, "open", no_room_for_the_temp_file, raising=False)  # the module's `open`, not builtins'
    with pytest.raises(OSError, match=r"new\.npz: the disk is full \(0 B written") as error:
        K.atomic_write(str(tmp_path / "new.npz"), fills_the_disk)
    assert ".part" not in str(error.value) and os.listdir(tmp_path) == []


def test_format_bytes():
    assert K.format_bytes(0) == "0 B" and K.format_bytes(999) == "999 B"
    assert K.format_bytes(1500) == "1.5 kB" and K.format_bytes(2_500_000_000) == "2.5 GB"
    assert K.format_bytes(999_999) == "1.0 MB" and K.format_bytes(5 * 10**15) == "5.0 PB"
    assert K.format_bytes(5 * 10**18) == "5000.0 PB"
    assert K.format_bytes(None) == "an unknown amount"


def test_available_memory_is_at_most_the_physical_memory(monkeypatch):
    """What ad_eval.py and sac_collect.py size their buffers against: MemAvailable, or where the host has no
    /proc/meminfo, its physical memory."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    available = K.available_memory()
    assert isinstance(available, int) and 0 < available <= physical
    real_open = open

    def open_without_meminfo(path, *args, **kwargs):
        if path == "/proc/meminfo":
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", open_without_meminfo)
    assert K.available_memory() == physical


def member_data_offset(path, member):
    """Where the compressed bytes of one member of a zip file begin and how many there are."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_length = int.from_bytes(f.read(2), "little")
        extra_length = int.from_bytes(f.read(2), "little")
    return info.header_offset + 30 + name_length + extra_length, info.compress_size


def test_a_corrupted_compressed_stream_is_one_line_naming_the_file(tmp_path):
    """Bytes flipped inside observations.npy's deflate stream: zlib.error or a bad CRC, read at load, one line."""
    path = tmp_path / "run_00000.npz"
    K.save_history(str(path), random_history(steps=300), {"size": 4})
    start, length = member_data_offset(path, "observations.npy")
    original = path.read_bytes()
    kinds = set()
    for first in (length // 4, length // 2, length - 8):
        data = bytearray(original)
        for i in range(start + first, start + first + 6):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
        with pytest.raises(ValueError, match=r"run_00000\.npz: not a readable \.npz learning history") as error:
            K.load_history(str(path))
        assert "\n" not in str(error.value)
        kinds.add(str(error.value).split("(")[1].split(":")[0])
    assert "zlib.error" in kinds  # the case of issue 23 (a traceback before)


def test_damaged_files_only_ever_raise_value_error(tmp_path):
    """Random damage anywhere in a history (bytes changed, the file cut short) never escapes as another error."""
    path = tmp_path / "run_00000.npz"
    K.save_history(str(path), random_history(steps=60), {"size": 4})
    original = path.read_bytes()
    rng = random.Random(0)
    refused = 0
    for trial in range(200):
        data = bytearray(original)
        first = rng.randrange(len(data) - 4)
        for i in range(first, first + rng.choice([1, 2, 4])):
            data[i] = rng.randrange(256)
        if trial % 4 == 0:
            data = data[: rng.randrange(len(data))]
        path.write_bytes(bytes(data))
        try:
            K.load_history(str(path))
        except ValueError as error:
            assert str(error).startswith(str(path)) and "\n" not in str(error)
            refused += 1
    assert refused > 150  # the rest changed bytes that no reader checks (a date, an unused field)


@pytest.mark.parametrize(
    "config, match",
    [
        ({"style": "nx1"}, "config has no grid size"),
        ({"size": None}, "config: grid size must be an integer"),
        ({"size": "9"}, "config: grid size must be an integer"),
        ({"size": 2}, "config: grid size must be an integer >= 3"),
    ],
)
def test_a_history_without_a_valid_grid_size_is_named(tmp_path, config, match):
    """Every history records its grid; without it a reader printed "NonexNone" (issue 23)."""
    path = tmp_path / "run_00000.npz"
    with pytest.raises(ValueError, match=rf"run_00000\.npz: {match}"):
        K.save_history(str(path), random_history(), config)
    assert not path.exists()
    np.savez(path, **random_history(), config=np.array(json.dumps(config)))
    with pytest.raises(ValueError, match=rf"run_00000\.npz: {match}"):
        K.load_history(str(path))


# ---------------------------------------------------------------- pictures
def cell_centre(image, x, y, size):
    scale = image.shape[0] // size
    return tuple(image[(size - 1 - y) * scale + scale // 2, x * scale + scale // 2])


def shows(image, colour):
    return bool((image == np.array(K.RENDER_COLORS[colour], dtype=np.uint8)).all(-1).any())


def test_draw_grid_shape_and_cells():
    task = (3, 1, 1, 4)  # key (3, 1), door (1, 4)
    image = K.draw_grid(5, (2, 2), task, key_found=True, door_found=True, scale=10)
    assert image.shape == (50, 50, 3) and image.dtype == np.uint8
    assert cell_centre(image, 3, 1, 5) == K.RENDER_COLORS["key"]
    assert cell_centre(image, 1, 4, 5) == K.RENDER_COLORS["door"]
    assert cell_centre(image, 2, 2, 5) == K.RENDER_COLORS["agent"]
    assert cell_centre(image, 4, 0, 5) == K.RENDER_COLORS["floor"]
    assert tuple(image[0, 0]) == K.RENDER_COLORS["wall"] and tuple(image[-1, 25]) == K.RENDER_COLORS["wall"]
    # y grows upwards: the door's row y = 4 is the image's top row of cells
    assert cell_centre(image, 1, 4, 5) == tuple(image[5, 15])
    assert K.draw_grid(9, (0, 0), task, scale=24).shape == (216, 216, 3)


def test_draw_grid_hides_what_was_not_found():
    task = (3, 1, 1, 4)
    hidden = K.draw_grid(5, (0, 0), task, scale=12)
    assert not shows(hidden, "key") and not shows(hidden, "door")
    assert cell_centre(hidden, 3, 1, 5) == K.RENDER_COLORS["floor"]
    key_only = K.draw_grid(5, (0, 0), task, key_found=True, scale=12)
    assert shows(key_only, "key") and not shows(key_only, "door")
    door_only = K.draw_grid(5, (0, 0), task, door_found=True, scale=12)
    assert shows(door_only, "door") and not shows(door_only, "key")
    carrying = K.draw_grid(5, (0, 0), task, has_key=True, scale=12)
    assert cell_centre(carrying, 0, 0, 5) == K.RENDER_COLORS["key"]  # the key on the agent, not on its cell
    assert cell_centre(carrying, 3, 1, 5) == K.RENDER_COLORS["floor"]


def test_draw_grid_path():
    path = [(0, 0), (1, 0), (1, 1), (0, 0), (0, 1)]  # three moves, then a jump back to the start, then a move
    image = K.draw_grid(4, (3, 3), None, path=path, scale=16)
    for x, y in path:
        corner = image[(3 - y) * 16 + 3, x * 16 + 3]  # away from the centre lines
        assert tuple(corner) == K.RENDER_COLORS["path"]
    assert cell_centre(image, 2, 2, 4) == K.RENDER_COLORS["floor"]
    # a move joins two centres; the jump from (1, 1) to (0, 0) is no line across the diagonal
    assert tuple(image[(3 - 0) * 16 + 8, 16]) == K.RENDER_COLORS["trail"]  # between (0, 0) and (1, 0)
    assert tuple(image[(3 - 1) * 16 + 2, 2 * 8]) != K.RENDER_COLORS["trail"]
    with pytest.raises(ValueError, match="path has cells outside the 4x4 grid"):
        K.draw_grid(4, (0, 0), None, path=[(0, 4)])
    with pytest.raises(ValueError, match="position"):
        K.draw_grid(4, (0.5, 1), None)
    with pytest.raises(ValueError, match="scale"):
        K.draw_grid(4, (0, 0), None, scale=2)


def test_rgb_array_render_follows_the_episode():
    env = K.KeyDoorEnv(size=5, task=(2, 0, 2, 2), render_mode="rgb_array")
    env.reset(seed=0)
    first = env.render()
    assert first.shape == (5 * 24, 5 * 24, 3) and first.dtype == np.uint8
    assert shows(first, "key") and shows(first, "door")  # the env's own view shows both
    assert cell_centre(first, 0, 0, 5) == K.RENDER_COLORS["agent"]
    for action in (RIGHT, RIGHT, UP):
        env.step(action)
    image = env.render()
    assert cell_centre(image, 2, 1, 5) == K.RENDER_COLORS["key"]  # the agent carries the key
    assert tuple(image[(4 - 1) * 24 + 12, 2 * 24 + 12 + 6]) == K.RENDER_COLORS["agent"]
    assert tuple(image[(4 - 0) * 24 + 3, 1 * 24 + 3]) == K.RENDER_COLORS["path"]  # (1, 0) was visited
    np.testing.assert_array_equal(
        image,
        K.draw_grid(
            5,
            (2, 1),
            (2, 0, 2, 2),
            path=[(0, 0), (1, 0), (2, 0), (2, 1)],
            key_found=True,
            door_found=True,
            has_key=True,
        ),
    )
    env.reset()
    restarted = env.render()  # a new episode, a new path: the start cell alone
    assert tuple(restarted[(4 - 0) * 24 + 3, 0 * 24 + 3]) == K.RENDER_COLORS["path"]
    assert tuple(restarted[(4 - 0) * 24 + 3, 1 * 24 + 3]) == K.RENDER_COLORS["floor"]
    check_env(gym.make("KeyDoor-Dark-v0", size=5, render_mode="rgb_array").unwrapped, skip_render_check=False)
    text = K.KeyDoorEnv(size=4, task=(1, 1, 3, 3), render_mode="ansi")
    text.reset(seed=0)
    assert text.render().splitlines()[3] == "A..."
    with pytest.raises(ValueError, match="render_mode"):
        K.KeyDoorEnv(render_mode="human")


# ---------------------------------------------------------------- the command-line entry
@dataclass
class Flags:
    n: int = 1
    """a number"""


def test_run_cli_prints_user_errors_as_one_line_and_exits_2(monkeypatch, capsys):
    """In this process: a subprocess would spend seconds importing torch (the scripts' own CLI tests run one)."""
    monkeypatch.setattr(sys, "argv", ["script.py", "--n", "3"])
    seen = []

    def main(args):
        seen.append(args.n)
        raise ValueError("data/run_00000.npz: not a readable history (a library's\n  message on two lines)")

    with pytest.raises(SystemExit) as exit_:
        K.run_cli(main, Flags)
    assert exit_.value.code == 2 and seen == [3]
    assert capsys.readouterr().err == (
        "script.py: error: data/run_00000.npz: not a readable history (a library's message on two lines)\n"
    )

    def disk_full(args):
        raise OSError("data/x.pt: the disk is full")

    with pytest.raises(SystemExit) as exit_:
        K.run_cli(disk_full, Flags)
    assert exit_.value.code == 2 and capsys.readouterr().err == "script.py: error: data/x.pt: the disk is full\n"

    def interrupted(args):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_:
        K.run_cli(interrupted, Flags)
    assert exit_.value.code == 130 and capsys.readouterr().err == "script.py: interrupted\n"
