"""Rules of Key-To-Door, the vector env, the task split, and the `.npz` contract."""

import errno
import json
import os
import random
import subprocess
import sys
import zipfile
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import keydoor_env as K

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
    with pytest.raises(ValueError, match=match):
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


def test_histories_that_break_the_episode_rules_are_refused(tmp_path):
    """Issue 32: histories that would train silently wrong: an episode return above 2, no episode end in 50 steps, a
    termination without the door's reward, termination and truncation on one step, another grid's observations."""
    hist = random_history(steps=300)
    ends = np.flatnonzero(hist["terminations"] | hist["truncations"])
    cases = []
    three = {k: v.copy() for k, v in hist.items()}
    three["rewards"][ends[1] - 3 : ends[1]] = 1  # three rewards in one episode (no termination among them)
    three["terminations"][ends[1] - 3 : ends[1]] = False
    cases.append((three, "an episode whose return is above 2"))
    endless = dict(hist, truncations=np.zeros(300, bool), terminations=np.zeros(300, bool))
    endless["rewards"] = np.zeros(300, np.float32)
    cases.append((endless, "an episode longer than 50 steps"))
    no_door = {k: v.copy() for k, v in hist.items()}
    truncated = np.flatnonzero(hist["truncations"])[0]
    no_door["terminations"][truncated] = True  # a truncation made a termination: no reward on it
    no_door["truncations"][truncated] = False
    cases.append((no_door, "a termination without the door's reward"))
    both = {k: v.copy() for k, v in hist.items()}
    both["terminations"][truncated] = True
    both["rewards"][truncated] = 1
    cases.append((both, "a step both terminated and truncated"))
    for bad, match in cases:
        with pytest.raises(ValueError, match=f"bad.npz: {match}"):
            K.save_history(str(tmp_path / "bad.npz"), bad, {"size": 4})
    # a 4x4 history whose config says 5x5: positions in thirds are not on a 5x5 grid's quarters
    with pytest.raises(ValueError, match="observations off the cells of the 5x5 grid its config names"):
        K.save_history(str(tmp_path / "bad.npz"), hist, {"size": 5})
    assert not os.path.exists(tmp_path / "bad.npz")
    K.save_history(str(tmp_path / "good.npz"), hist, {"size": 4})  # the history itself keeps every rule


def test_misleading_inputs_get_their_own_message(tmp_path):
    """Issue 32: float16 observations said "not on the grid"; an output folder that is a symlink loop passed the check
    and failed after the work; a FIFO named like a history blocked its read."""
    hist = random_history()
    half = dict(hist, observations=hist["observations"].astype(np.float16))
    np.savez(tmp_path / "run_00000.npz", **half, config=np.array('{"size": 4}'))
    with pytest.raises(ValueError, match="observations has dtype float16, expected float32"):
        K.load_history(str(tmp_path / "run_00000.npz"))
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    with pytest.raises(OSError, match="loop/out: cannot write there"):
        K.check_writable(str(tmp_path / "loop" / "out"))
    folder = tmp_path / "data"
    folder.mkdir()
    K.save_history(str(folder / "run_00000.npz"), hist, {"size": 4})
    os.mkfifo(folder / "run_00001.npz")
    assert K.history_paths(str(folder)) == [str(folder / "run_00000.npz")]  # read, not waited on


def test_a_bad_file_is_named_when_loaded(tmp_path):
    hist = random_history()
    bad = dict(hist, observations=np.full_like(hist["observations"], np.nan))
    np.savez(tmp_path / "run_00003.npz", **bad, config=np.array('{"size": 4}'))
    with pytest.raises(ValueError, match="run_00003.npz.*NaN"):
        K.load_history(str(tmp_path / "run_00003.npz"))


def test_a_lock_refuses_a_second_writer_until_the_first_process_ends(tmp_path):
    """Issue 32: two runs with one checkpoint name overwrote each other. The lock is the OS's (flock): held for the
    process's life, released however it ends, so no stale lock outlives a killed run."""
    path = str(tmp_path / "checkpoints" / "run.pt")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import keydoor_env as K, time; K.check_writable({path!r}); held = K.lock({path!r}); "
            "print('held', flush=True); time.sleep(60)",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OSError, match=r"run.pt is being written by another run \(it holds .*run.pt.lock\)"):
        K.lock(path)
    holder.kill()  # a killed holder leaves no lock behind
    holder.wait()
    K.lock(path)
    assert os.listdir(tmp_path / "checkpoints") == ["run.pt.lock"]
    os.mkfifo(tmp_path / "checkpoints" / "other.pt.lock")  # a FIFO where the lock goes: refused, not waited on
    with pytest.raises(OSError, match="other.pt.lock"):
        K.lock(str(tmp_path / "checkpoints" / "other.pt"))


def test_check_writable_and_history_paths(tmp_path):
    """Issue 32: an output is proved before any work by writing a probe beside it with `atomic_write` (then removed),
    its temp file's name longer than any a write makes: the OS answers for permissions, names too long, what is in
    the way."""
    K.check_writable(str(tmp_path / "a" / "b" / "run.pt"))
    assert os.listdir(tmp_path / "a" / "b") == []  # the folders made, the probe removed
    K.check_writable(str(tmp_path / "runs") + "/")  # a folder: TensorBoard's
    assert os.path.isdir(tmp_path / "runs")
    if os.geteuid() != 0:  # root writes anywhere
        readonly = tmp_path / "ro"
        readonly.mkdir(mode=0o500)
        with pytest.raises(OSError, match="ro/x.pt: cannot write there"):
            K.check_writable(str(readonly / "x.pt"))
    (tmp_path / "a_file").write_bytes(b"")
    with pytest.raises(OSError, match="a_file/x/y: cannot write there"):  # the OS: a file is not a folder
        K.check_writable(str(tmp_path / "a_file" / "x" / "y"))
    # a name the file system cannot hold, and one that fits alone but not with the temp file's suffix
    for length in (300, 250):
        with pytest.raises(OSError, match=r"cannot write there \(File name too long\)"):
            K.check_writable(str(tmp_path / ("n" * length + ".pt")))
    with pytest.raises(OSError, match="cannot write there"):  # a folder name too long
        K.check_writable(str(tmp_path / ("d" * 300) / "x.pt"))
    # what exists at the path must be a regular file: a FIFO would block a read, a folder fail the rename
    os.mkfifo(tmp_path / "fifo.pt")
    (tmp_path / "folder.pt").mkdir()
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling.pt")
    for name in ("fifo.pt", "folder.pt", "dangling.pt"):
        with pytest.raises(OSError, match=f"{name}: cannot write there \\(it exists and is not a regular file\\)"):
            K.check_writable(str(tmp_path / name))
    K.check_writable(str(tmp_path / "a_file"))  # an existing regular file is rewritten
    with pytest.raises(FileNotFoundError, match="missing"):  # the OS names a missing folder
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


def test_stream_episodes_and_window_returns():
    rewards = np.array([[0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0]], dtype=np.float32)
    dones = np.array([[0, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0]], dtype=bool)
    episodes = K.stream_episodes(rewards, dones)
    assert episodes["env"].tolist() == [0, 0] and episodes["return"].tolist() == [2, 0]
    assert episodes["end_step"].tolist() == [3, 6]
    early = K.window_returns(episodes, 2, 0, 3)  # the episodes that ended in steps (0, 3]
    assert early[0] == 2 and np.isnan(early[1])
    short = K.stream_episodes(rewards, dones, lengths=np.array([3, 6]))
    assert short["end_step"].tolist() == [3]


def test_random_episodes_draw_one_action_per_env_and_step_and_stop_a_trial_at_its_episodes():
    """The one random baseline of ad_eval.py (a stream of `steps`) and rl2_train.py (a trial of E episodes): drawing
    all actions at once gives the actions of one draw per step, as ad_eval.py drew them (its files stay the same)."""
    tasks = K.task_split(5, "test")[:6]
    env = K.KeyDoorVectorEnv(6, size=5, tasks=tasks, split="all")
    env.reset(seed=3)
    rng = np.random.default_rng(3)
    rewards = np.zeros((6, 400), np.float32)
    dones = np.zeros((6, 400), bool)
    for t in range(400):
        (_, rewards[:, t], terminations, truncations, _) = env.step(rng.integers(0, K.NUM_ACTIONS, 6))
        dones[:, t] = terminations | truncations
    expected = K.stream_episodes(rewards, dones)
    episodes = K.random_episodes(tasks, 5, 400, 3)
    assert all(np.array_equal(episodes[key], expected[key]) for key in expected)
    trial = K.random_episodes(tasks, 5, 3 * K.EPISODE_STEPS, 3, episodes=3)
    assert np.bincount(trial["env"]).tolist() == [3] * 6  # every env's trial ends with its 3rd episode
    for i in range(6):  # the same actions: a trial is the first 3 episodes of the longer stream
        first_three = {key: value[expected["env"] == i][:3] for key, value in expected.items()}
        assert all(np.array_equal(trial[key][trial["env"] == i], first_three[key]) for key in expected)


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
    with pytest.raises(ValueError, match=r"missing\.npz: not a readable .*FileNotFoundError"):
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
    with pytest.raises(ValueError, match=r"noconfig\.npz: not a readable .*KeyError: 'config'"):
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


def open_on_a_full_disk(monkeypatch, code, fails_at):
    """The module's `open` (not builtins'): a file that fails as a full disk does, at its creation, after a part of
    the bytes reached the disk, or when they are fsynced (where a network file system reports it)."""
    real_open = open

    def full_disk(*args, **kwargs):
        if fails_at == "create":
            raise OSError(code, os.strerror(code), args[0])
        f = real_open(*args, **kwargs)

        def write(data):
            f.raw.write(bytes(data)[: len(data) // 2])
            raise OSError(code, os.strerror(code))

        if fails_at == "write":
            f.write = write
        return f

    def fsync(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(K, "open", full_disk, raising=False)
    if fails_at == "fsync":
        monkeypatch.setattr(K.os, "fsync", fsync)


@pytest.mark.parametrize("fails_at", ["create", "write", "fsync"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_atomic_write_on_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch, code, fails_at):
    """The operating system's ENOSPC (or EDQUOT) becomes one line naming the file; the old file is kept and no temp
    file is left."""
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old")
    open_on_a_full_disk(monkeypatch, code, fails_at)
    with pytest.raises(OSError) as error:
        K.atomic_write(str(path), lambda f: torch.save({"weights": torch.zeros(10_000)}, f))
    message = str(error.value)
    assert message == f"{path}: the disk is full; it was left as it was: free some space and rerun"
    assert error.value.__cause__.errno == code  # the operating system's own error, kept as the cause
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["checkpoint.pt"]  # no .part left


def test_a_new_file_on_a_full_disk_is_not_created(tmp_path, monkeypatch):
    open_on_a_full_disk(monkeypatch, errno.ENOSPC, "write")
    with pytest.raises(OSError, match=r"new\.npz: the disk is full; it was left as it was") as error:
        K.save_history(str(tmp_path / "new.npz"), random_history(), {"size": 4})
    assert ".part" not in str(error.value) and os.listdir(tmp_path) == []


def test_other_errors_pass_unchanged_and_a_killed_writers_part_is_left_alone(tmp_path, monkeypatch):
    """A killed writer's temp file (another pid's) is neither read nor reused: two writers of one path never share a
    temp file (a shared one could be truncated under the other writer)."""
    path = tmp_path / "f.bin"
    (tmp_path / "f.bin.999999.part").write_bytes(b"half of a write that was killed")
    K.atomic_write(str(path), lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new" and sorted(os.listdir(tmp_path)) == ["f.bin", "f.bin.999999.part"]
    open_on_a_full_disk(monkeypatch, errno.EIO, "fsync")
    with pytest.raises(OSError, match="Input/output error"):
        K.atomic_write(str(path), lambda f: f.write(b"newer"))
    assert path.read_bytes() == b"new" and sorted(os.listdir(tmp_path)) == ["f.bin", "f.bin.999999.part"]


def test_atomic_write_round_trips_torch_and_numpy(tmp_path):
    """Writers write into memory first: torch.save and np.savez_compressed read back what they wrote."""
    state = {"weights": torch.arange(1000.0)}
    K.atomic_write(str(tmp_path / "a" / "model.pt"), lambda f: torch.save(state, f))  # the folder made too
    assert torch.equal(torch.load(tmp_path / "a" / "model.pt", weights_only=True)["weights"], state["weights"])
    K.atomic_write(str(tmp_path / "x.npz"), lambda f: np.savez_compressed(f, x=np.arange(5)))
    with np.load(tmp_path / "x.npz") as data:
        assert data["x"].tolist() == [0, 1, 2, 3, 4]


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
        ({"style": "nx1"}, r"config has no valid grid size 'size' \(KeyError: 'size'\); every history records"),
        ({"size": None}, r"config has no valid grid size 'size' \(ValueError: grid size must be an integer"),
        ({"size": "9"}, r"config has no valid grid size 'size' \(ValueError: grid size must be an integer"),
        ({"size": 2}, r"config has no valid grid size 'size' \(ValueError: grid size must be an integer >= 3"),
        ([9], r"config has no valid grid size 'size' \(TypeError"),  # a config that is no JSON object
        ("size", r"config has no valid grid size 'size' \(TypeError"),
    ],
)
def test_a_history_without_a_valid_grid_size_is_named(tmp_path, config, match):
    """Every history records its grid; without it a reader printed "NonexNone" (issue 23). One line naming the
    file, whatever the config holds."""
    path = tmp_path / "run_00000.npz"
    with pytest.raises(ValueError, match=rf"run_00000\.npz: {match}"):
        K.save_history(str(path), random_history(), config)
    assert not path.exists()
    np.savez(path, **random_history(), config=np.array(json.dumps(config)))
    with pytest.raises(ValueError, match=rf"run_00000\.npz: {match}"):
        K.load_history(str(path))


# ---------------------------------------------------------------- pictures
def cells_of(image, size):
    """The colour of every cell of an "rgb_array" picture, [y][x] (y up), after checking each cell is one colour."""
    pixels = K.KeyDoorEnv.CELL_PIXELS
    blocks = image.reshape(size, pixels, size, pixels, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()  # every cell a block of one colour
    return {(x, size - 1 - row): tuple(blocks[row, 0, x, 0]) for row in range(size) for x in range(size)}


def test_rgb_array_render_follows_the_episode():
    """The picture is the "ansi" grid in colour: floor, door, key until picked up, the agent ("a" with the key)."""
    colours = K.KeyDoorEnv.CELL_COLORS
    env = K.KeyDoorEnv(size=5, task=(2, 0, 2, 2), render_mode="rgb_array")
    env.reset(seed=0)
    first = env.render()
    assert first.shape == (5 * 24, 5 * 24, 3) and first.dtype == np.uint8
    cells = cells_of(first, 5)
    assert (cells[(0, 0)], cells[(2, 0)], cells[(2, 2)]) == (colours["A"], colours["K"], colours["D"])
    assert [cell for cell, colour in cells.items() if colour == colours["."]] == [
        cell for cell in cells if cell not in ((0, 0), (2, 0), (2, 2))
    ]
    for action in (RIGHT, RIGHT, UP):
        env.step(action)
    cells = cells_of(env.render(), 5)
    assert cells[(2, 1)] == colours["a"] and cells[(2, 0)] == colours["."]  # the agent carries the key away
    assert cells[(2, 2)] == colours["D"]
    assert sum(colour == colours["."] for colour in cells.values()) == 25 - 2
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

    def out_of_memory(args):  # how the scripts turn PyTorch's out-of-memory error into the flags to lower
        raise MemoryError("out of memory: lower --batch-size")

    with pytest.raises(SystemExit) as exit_:
        K.run_cli(out_of_memory, Flags)
    assert exit_.value.code == 2 and capsys.readouterr().err == "script.py: error: out of memory: lower --batch-size\n"

    def interrupted(args):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_:
        K.run_cli(interrupted, Flags)
    assert exit_.value.code == 130 and capsys.readouterr().err == "script.py: interrupted\n"
