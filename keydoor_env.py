"""Key-To-Door grid worlds (Dark and Light), a numpy vector env, the train/test task split, and the
`.npz` learning-history contract that every stage of keydoor-ad reads and writes.

Rules (the Algorithm Distillation report's Dark-Key-To-Door):
- a `size` x `size` room with walls at the border; the agent starts every episode in cell (0, 0);
- 5 actions: 0 stay, 1 right (+x), 2 left (-x), 3 up (+y), 4 down (-y); moving into a wall is a stay;
- +1 the first time the agent enters the key cell (it then holds the key), +1 when it enters the
  door cell while holding the key, which terminates the episode; the door without the key does
  nothing;
- truncation after exactly 50 steps (`EPISODE_STEPS`).

A task is `(key_x, key_y, door_x, door_y)` in grid cells; key and door are distinct cells and
neither is the start cell. Observations are float32 in [0, 1]:
`[agent_x, agent_y, has_key, t / 50]` with positions divided by `size - 1` (Dark); Light appends
`[key_x, key_y, door_x, door_y]` scaled the same way, so `obs[..., :4]` of a Light observation is
exactly the Dark one.

Importing this module registers `KeyDoor-Dark-v0` and `KeyDoor-Light-v0` with gymnasium.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
import sys
import tempfile
import time
import zipfile
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

EPISODE_STEPS = 50
"""Steps per episode before truncation (the report's 50; the t/50 observation feature uses it)."""
NUM_ACTIONS = 5
ACTION_DELTAS = np.array([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]], dtype=np.int64)  # (5, 2): dx, dy
DARK_OBS_DIM = 4
LIGHT_OBS_DIM = 8
HELD_OUT_FRACTION = 0.1
"""Share of all valid tasks held out for evaluation (validation and test), for every grid size."""
VALIDATION_TASKS = 20
"""Held-out tasks in the fixed validation split (at most half the held-out tasks on tiny grids)."""
SOLVED_RETURN, SOLVED_WINDOW = 1.8, 10
"""A learner has solved its task once `SOLVED_WINDOW` consecutive episodes average `SOLVED_RETURN`."""


# ----------------------------------------------------------------------------------------------
# Tasks and their splits: train, and the held-out tasks as validation and test
# ----------------------------------------------------------------------------------------------
def validate_size(size: int) -> int:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 3:
        raise ValueError(f"grid size must be an integer >= 3, got {size!r}")
    return int(size)


def validate_task(task: Any, size: int) -> np.ndarray:
    """Return `task` as an int64 array `(key_x, key_y, door_x, door_y)`, or raise ValueError."""
    size = validate_size(size)
    arr = np.asarray(task)
    if arr.shape != (4,) or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"a task is 4 integers (key_x, key_y, door_x, door_y), got {task!r}")
    arr = arr.astype(np.int64)
    if arr.min() < 0 or arr.max() > size - 1:
        raise ValueError(f"task {arr.tolist()} lies outside the {size}x{size} grid (cells 0..{size - 1})")
    if arr[0] == arr[2] and arr[1] == arr[3]:
        raise ValueError(f"task {arr.tolist()}: key and door are the same cell")
    if (arr[0] == 0 and arr[1] == 0) or (arr[2] == 0 and arr[3] == 0):
        raise ValueError(f"task {arr.tolist()}: key or door on the start cell (0, 0)")
    return arr


def all_tasks(size: int) -> np.ndarray:
    """Every valid task of a grid, (n, 4) int64, in lexicographic order."""
    size = validate_size(size)
    cells = np.array([(x, y) for x in range(size) for y in range(size) if (x, y) != (0, 0)])
    key = np.repeat(cells, len(cells), axis=0)
    door = np.tile(cells, (len(cells), 1))
    keep = (key != door).any(axis=1)
    return np.concatenate([key[keep], door[keep]], axis=1).astype(np.int64)


@functools.lru_cache(maxsize=None)
def _splits(size: int) -> dict[str, np.ndarray]:
    tasks = all_tasks(size)
    # Rank tasks by a cryptographic hash of (size, task): the same split on every machine, numpy
    # version and seed, and no spatial pattern (unlike "hold out one row").
    digests = [hashlib.sha256(f"keydoor:{size}:{k0},{k1},{d0},{d1}".encode()).hexdigest() for k0, k1, d0, d1 in tasks]
    order = np.argsort(np.array(digests), kind="stable")
    num_held_out = max(2, int(round(HELD_OUT_FRACTION * len(tasks))))
    held_out = tasks[np.sort(order[:num_held_out])]
    # validation: the first tasks of a fixed shuffle of the held-out ones (the 20 tasks on which the
    # project's settings were chosen); test: the rest, on which results are reported
    shuffled = held_out[np.random.default_rng(1).permutation(len(held_out))]
    num_validation = min(VALIDATION_TASKS, len(held_out) // 2)
    splits = {"train": tasks[np.sort(order[num_held_out:])], "validation": shuffled[:num_validation],
              "test": shuffled[num_validation:], "all": tasks}
    for array in splits.values():
        array.flags.writeable = False
    return splits


def task_split(size: int, split: str) -> np.ndarray:
    """The tasks of one split of a grid, (n, 4) int64, read-only, the same on every machine.

    - "train": about 90% of all valid tasks; collection and training use only these.
    - "validation": `VALIDATION_TASKS` held-out tasks (fewer on tiny grids) for choosing settings.
    - "test": the other held-out tasks, for reporting results.
    - "all": every valid task.
    """
    splits = _splits(validate_size(size))
    if split not in splits:
        raise ValueError(f"split must be one of {sorted(splits)}, got {split!r}")
    return splits[split]


def eval_tasks(size: int, split: str, num: int, seed: int) -> np.ndarray:
    """`num` evaluation tasks of the "validation" or "test" split, (num, 4). Validation tasks come in
    their fixed order; test tasks are a seeded random choice. More than the split holds is an error."""
    if split not in ("validation", "test"):
        raise ValueError(f"evaluation uses held-out tasks: split must be 'validation' or 'test', got {split!r}")
    tasks = task_split(size, split)
    if not 1 <= num <= len(tasks):
        raise ValueError(f"{num} evaluation envs: the {split} split of the {size}x{size} grid holds {len(tasks)} tasks "
                         f"(ask for 1..{len(tasks)})")
    if split == "test":
        tasks = tasks[np.random.default_rng(seed).permutation(len(tasks))]
    return tasks[:num].copy()


def obs_scale(size: int, obs_dim: int) -> np.ndarray:
    """(obs_dim,) float32: observation = integer features / scale (cells, has_key, t, task cells)."""
    return np.array([size - 1, size - 1, 1, EPISODE_STEPS] + [size - 1] * 4, dtype=np.float32)[:obs_dim]


# ----------------------------------------------------------------------------------------------
# The single environment
# ----------------------------------------------------------------------------------------------
class KeyDoorEnv(gym.Env):
    """Dark- or Light-Key-To-Door as a `gymnasium.Env`.

    Args:
        size: grid side (>= 3).
        light: append the key and door positions to the observation.
        task: a fixed task; None draws one from `split` at the first reset.
        resample: draw a new task from `split` at every reset (1xN); otherwise keep it (Nx1, evaluation).
        split: the task pool for draws: "train" (default), "validation", "test" or "all".
        render_mode: None or "ansi".

    `reset(options={"task": t})` sets the task; in fixed mode it is kept for later resets.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, size: int = 9, light: bool = False, task: Any = None, resample: bool = False,
                 split: str = "train", render_mode: str | None = None):
        self.size = validate_size(size)
        self.light = bool(light)
        self.resample = bool(resample)
        self.pool = task_split(self.size, split)
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.render_mode = render_mode
        self.task = None if task is None else validate_task(task, self.size)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (LIGHT_OBS_DIM if light else DARK_OBS_DIM,), np.float32)
        self.action_space = gym.spaces.Discrete(NUM_ACTIONS)
        self._pos = [0, 0]
        self._has_key = False
        self._t = 0

    def _obs(self) -> np.ndarray:
        scale = self.size - 1
        obs = [self._pos[0] / scale, self._pos[1] / scale, float(self._has_key), self._t / EPISODE_STEPS]
        if self.light:
            obs += [v / scale for v in self.task]
        return np.array(obs, dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and options.get("task") is not None:
            self.task = validate_task(options["task"], self.size)
        elif self.task is None or self.resample:
            self.task = self.pool[self.np_random.integers(len(self.pool))].copy()
        self._pos = [0, 0]
        self._has_key = False
        self._t = 0
        return self._obs(), {"task": self.task.copy()}

    def step(self, action):
        if self.task is None:
            raise RuntimeError("call reset() before step()")
        if not isinstance(action, (int, np.integer)) or not 0 <= action < NUM_ACTIONS:
            raise ValueError(f"action must be an integer in 0..{NUM_ACTIONS - 1}, got {action!r}")
        dx, dy = ACTION_DELTAS[action]
        x = min(max(self._pos[0] + int(dx), 0), self.size - 1)
        y = min(max(self._pos[1] + int(dy), 0), self.size - 1)
        self._pos = [x, y]
        reward, terminated = 0.0, False
        if not self._has_key and x == self.task[0] and y == self.task[1]:
            self._has_key, reward = True, 1.0
        elif self._has_key and x == self.task[2] and y == self.task[3]:
            reward, terminated = 1.0, True
        self._t += 1
        truncated = self._t >= EPISODE_STEPS and not terminated
        return self._obs(), reward, terminated, truncated, {}

    def render(self):
        if self.render_mode != "ansi":
            return None
        rows = []
        for y in reversed(range(self.size)):  # y grows upwards
            row = ""
            for x in range(self.size):
                cell = "."
                if self.task is not None and (x, y) == (self.task[2], self.task[3]):
                    cell = "D"
                if self.task is not None and (x, y) == (self.task[0], self.task[1]) and not self._has_key:
                    cell = "K"
                if [x, y] == self._pos:
                    cell = "a" if self._has_key else "A"
                row += cell
            rows.append(row)
        return "\n".join(rows) + f"\nt={self._t} has_key={self._has_key}\n"


# ----------------------------------------------------------------------------------------------
# The numpy vector environment
# ----------------------------------------------------------------------------------------------
class KeyDoorVectorEnv(VectorEnv):
    """N Key-To-Door environments stepped with array operations in one call (gymnasium VectorEnv API).

    Each env has its own task and mode: `tasks` is None (each env draws one from `split` at the
    first reset) or an (N, 4) array; `resample` is a bool or an (N,) bool array (True: new task at
    every reset, False: fixed task).

    Autoreset is SAME_STEP (`metadata["autoreset_mode"]`): when an env terminates or truncates, it
    is reset inside the same `step` call. The returned observation of that env is then the first
    observation of its next episode, and the last observation of the finished episode is in
    `infos["final_obs"]` (rows where `infos["_final_obs"]` is True). So the observation returned by
    `step` is always what the agent sees before its next action, exactly the `.npz` contract.

    Randomness: env i owns a generator seeded with `seed + i` by `reset(seed=seed)` (or `seed[i]`
    when `seed` is a list), as gymnasium's vector envs seed their sub-envs, so env i matches `KeyDoorEnv` reset with `seed + i` draw for
    draw, and envs never share random numbers.

    `reset(options=...)` accepts `"tasks"` (an (N, 4) array, kept in fixed mode) and `"reset_mask"`
    (an (N,) bool array: reset only those envs; the others keep their state).
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, num_envs: int, size: int = 9, light: bool = False, tasks: Any = None,
                 resample: Any = False, split: str = "train"):
        if not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        self.num_envs = int(num_envs)
        self.size = validate_size(size)
        self.light = bool(light)
        self.pool = task_split(self.size, split)
        self.resample = np.broadcast_to(np.asarray(resample, dtype=bool), (self.num_envs,)).copy()
        self.tasks = np.zeros((self.num_envs, 4), dtype=np.int64)
        self._has_task = np.zeros(self.num_envs, dtype=bool)
        if tasks is not None:
            self._set_tasks(tasks, np.ones(self.num_envs, dtype=bool))
        self.single_observation_space = gym.spaces.Box(0.0, 1.0, (LIGHT_OBS_DIM if light else DARK_OBS_DIM,), np.float32)
        self.single_action_space = gym.spaces.Discrete(NUM_ACTIONS)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.render_mode = None
        # State as flat cell indices (cell = x * size + y) so that a step is one table lookup.
        cells = np.arange(self.size * self.size)
        xy = np.stack([cells // self.size, cells % self.size], axis=1)  # (cells, 2)
        moved = np.clip(xy[:, None, :] + ACTION_DELTAS[None, :, :], 0, self.size - 1)  # (cells, 5, 2)
        self._next_cell = moved[..., 0] * self.size + moved[..., 1]  # (cells, 5)
        self._cell_xy = (xy / (self.size - 1)).astype(np.float32)  # (cells, 2) scaled positions
        self.cell = np.zeros(self.num_envs, dtype=np.int64)
        self.has_key = np.zeros(self.num_envs, dtype=bool)
        self.t = np.zeros(self.num_envs, dtype=np.int64)
        self._key_cell = np.zeros(self.num_envs, dtype=np.int64)
        self._door_cell = np.zeros(self.num_envs, dtype=np.int64)
        self._obs_buf = np.zeros((self.num_envs, self.single_observation_space.shape[0]), dtype=np.float32)
        self._rngs: list[np.random.Generator] | None = None
        self._started = False

    def _set_tasks(self, tasks: Any, mask: np.ndarray) -> None:
        tasks = np.asarray(tasks)
        if tasks.shape != (self.num_envs, 4):
            raise ValueError(f"tasks must have shape ({self.num_envs}, 4), got {tasks.shape}")
        for i in np.flatnonzero(mask):
            self.tasks[i] = validate_task(tasks[i], self.size)
        self._has_task |= mask

    def _draw_tasks(self, envs: np.ndarray) -> None:
        for i in envs:  # a Python loop only over envs that draw: each owns its generator
            self.tasks[i] = self.pool[self._rngs[i].integers(len(self.pool))]
        self._has_task[envs] = True

    def _sync_tasks(self) -> None:
        """Refresh what is derived from `tasks`: the key and door cells and the Light features."""
        self._key_cell = self.tasks[:, 0] * self.size + self.tasks[:, 1]
        self._door_cell = self.tasks[:, 2] * self.size + self.tasks[:, 3]
        if self.light:
            self._obs_buf[:, DARK_OBS_DIM:] = self.tasks / (self.size - 1)

    def _obs(self) -> np.ndarray:
        obs = self._obs_buf  # (N, obs_dim); the Light columns are kept by _sync_tasks
        obs[:, :2] = self._cell_xy[self.cell]
        obs[:, 2] = self.has_key
        obs[:, 3] = self.t * (1.0 / EPISODE_STEPS)
        return obs.copy()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        options = options or {}
        if isinstance(seed, (list, tuple, np.ndarray)):  # one seed per env, as SyncVectorEnv takes
            if len(seed) != self.num_envs:
                raise ValueError(f"expected {self.num_envs} seeds, got {len(seed)}")
            self._rngs = [seeding.np_random(int(s))[0] for s in seed]
        elif seed is not None:
            self._rngs = [seeding.np_random(seed + i)[0] for i in range(self.num_envs)]
        elif self._rngs is None:
            self._rngs = [seeding.np_random()[0] for _ in range(self.num_envs)]
        mask = options.get("reset_mask")
        mask = np.ones(self.num_envs, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        if mask.shape != (self.num_envs,):
            raise ValueError(f"reset_mask must have shape ({self.num_envs},), got {mask.shape}")
        if options.get("tasks") is not None:
            self._set_tasks(options["tasks"], mask)
        else:
            self._draw_tasks(np.flatnonzero(mask & (self.resample | ~self._has_task)))
        self._sync_tasks()
        self.cell[mask] = 0
        self.has_key[mask] = False
        self.t[mask] = 0
        self._started = True
        return self._obs(), {"task": self.tasks.copy()}

    def step(self, actions):
        if not self._started:
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or actions.dtype.kind not in "iu":
            raise ValueError(f"actions must be {self.num_envs} integers, got shape {actions.shape} dtype {actions.dtype}")
        if actions.min() < 0 or actions.max() >= NUM_ACTIONS:
            raise ValueError(f"actions must lie in 0..{NUM_ACTIONS - 1}, got {actions.min()}..{actions.max()}")
        self.cell = self._next_cell[self.cell, actions]
        got_key = (self.cell == self._key_cell) & ~self.has_key
        # key != door, so an env cannot pick up the key and open the door in the same step
        opened = (self.cell == self._door_cell) & self.has_key
        self.has_key |= got_key
        self.t += 1
        rewards = (got_key | opened).astype(np.float32)
        terminations = opened
        truncations = (self.t >= EPISODE_STEPS) & ~terminations
        done = terminations | truncations
        infos: dict[str, Any] = {}
        if done.any():
            infos["final_obs"] = self._obs()
            infos["_final_obs"] = done
            resampled = np.flatnonzero(done & self.resample)
            if len(resampled):
                self._draw_tasks(resampled)
                self._sync_tasks()
            self.cell[done] = 0
            self.has_key[done] = False
            self.t[done] = 0
        return self._obs(), rewards, terminations, truncations, infos


class TorchVectorEnv:
    """The rules of `KeyDoorVectorEnv` as torch integer arithmetic on any device, for N envs with
    fixed tasks (Nx1 collection, evaluation): on a GPU a step needs no round trip to the host.
    Step for step it returns exactly what the numpy env returns (tests/test_env.py), with the
    same SAME_STEP autoreset; `step` gives `(observations, rewards, terminations, truncations,
    final_observations)` as tensors, the last being what `final_observations()` gives for numpy."""

    def __init__(self, tasks: Any, size: int, light: bool, device: torch.device | str = "cpu"):
        self.size, self.light, self.device = validate_size(size), bool(light), torch.device(device)
        tasks = np.asarray(tasks)
        if tasks.ndim != 2 or tasks.shape[1] != 4:
            raise ValueError(f"tasks must have shape (N, 4), got {tasks.shape}")
        self.tasks = np.stack([validate_task(task, self.size) for task in tasks])
        self.num_envs = len(self.tasks)
        numpy_env = KeyDoorVectorEnv(1, size=self.size)  # its tables, so that floats match bit for bit
        as_tensor = lambda array: torch.as_tensor(array, device=self.device)
        self._next_cell, self._cell_xy = as_tensor(numpy_env._next_cell), as_tensor(numpy_env._cell_xy)
        self._time = as_tensor((np.arange(EPISODE_STEPS + 1) * (1.0 / EPISODE_STEPS)).astype(np.float32))
        self._key_cell = as_tensor(self.tasks[:, 0] * self.size + self.tasks[:, 1])
        self._door_cell = as_tensor(self.tasks[:, 2] * self.size + self.tasks[:, 3])
        self._task_features = as_tensor((self.tasks / (self.size - 1)).astype(np.float32))  # (N, 4) Light columns
        self.cell = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self.has_key = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        self.t = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)

    def _obs(self) -> torch.Tensor:
        parts = [self._cell_xy[self.cell], self.has_key.float()[:, None], self._time[self.t][:, None]]
        return torch.cat(parts + [self._task_features] if self.light else parts, dim=1)  # (N, obs_dim)

    def reset(self) -> torch.Tensor:
        self.cell.zero_(), self.has_key.zero_(), self.t.zero_()
        return self._obs()

    def step(self, actions: torch.Tensor):
        self.cell = self._next_cell[self.cell, actions]
        got_key = (self.cell == self._key_cell) & ~self.has_key
        terminations = (self.cell == self._door_cell) & self.has_key
        self.has_key |= got_key
        self.t += 1
        truncations = (self.t >= EPISODE_STEPS) & ~terminations
        final = self._obs()
        done = terminations | truncations
        self.cell.masked_fill_(done, 0), self.has_key.masked_fill_(done, False), self.t.masked_fill_(done, 0)
        return self._obs(), (got_key | terminations).float(), terminations, truncations, final


def final_observations(observations: np.ndarray, infos: dict) -> np.ndarray:
    """(N, obs_dim) what each env showed right after its last action: the returned observation, or,
    where an episode just ended, gymnasium's final observation (the returned one is the next start).
    Its first two columns are the cell the action led to: at the door, the door's cell."""
    if "final_obs" not in infos:
        return observations
    return np.where(infos["_final_obs"][:, None], infos["final_obs"], observations)


# ----------------------------------------------------------------------------------------------
# The `.npz` learning-history contract, and safe files
# ----------------------------------------------------------------------------------------------
HISTORY_DTYPES = {
    "observations": np.float32,
    "actions": np.int64,
    "rewards": np.float32,
    "terminations": np.bool_,
    "truncations": np.bool_,
    "tasks": np.int64,
}
PART_PREFIX = ".tmp-"


def atomic_write(path: str, write: Callable[[Any], None]) -> None:
    """Write a file through `write(fileobj)` to a temp file in the same folder, then `os.replace`.

    A kill at any moment leaves either the old file or the new one, never a half-written one; the
    temp file's name holds host and process, so that `remove_stale_parts` can tell a dead writer's.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{PART_PREFIX}{socket.gethostname()}-{os.getpid()}-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def remove_stale_parts(folder: str, max_age_s: float = 3600.0) -> list[str]:
    """Delete the temp files that killed writers left in `folder`: those of a process of this host
    that no longer runs, and any older than `max_age_s` (a writer on another host sharing the folder).
    Returns the removed paths."""
    if not os.path.isdir(folder):
        return []
    host, removed = socket.gethostname(), []
    for name in os.listdir(folder):
        if not (name.startswith(PART_PREFIX) and name.endswith(".part")):
            continue
        path = os.path.join(folder, name)
        fields = name[len(PART_PREFIX):].rsplit("-", 2)  # host, pid, mkstemp's random part
        dead = len(fields) == 3 and fields[0] == host and fields[1].isdigit() and not _process_alive(int(fields[1]))
        try:
            if dead or time.time() - os.path.getmtime(path) > max_age_s:
                os.remove(path)
                removed.append(path)
        except FileNotFoundError:
            pass  # its writer finished or removed it meanwhile
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_writable(folder: str) -> str:
    """Create `folder` if needed and prove that a file can be written there, before any work is done."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise OSError(f"{folder}: cannot write there ({e.strerror or type(e).__name__})") from None
    return folder


def history_paths(folder: str) -> list[str]:
    """The `.npz` histories of a dataset folder, sorted; a missing or empty folder is an error."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"dataset folder {folder} does not exist; collect it first (see README)")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".npz") and not n.startswith("."))
    if not names:
        raise ValueError(f"dataset folder {folder} holds no .npz histories")
    return [os.path.join(folder, name) for name in names]


def save_history(path: str, history: dict[str, np.ndarray], config: dict) -> None:
    """Check one learning history against the contract and write it atomically as `.npz`."""
    arrays = {key: np.asarray(history[key], dtype=dtype) for key, dtype in HISTORY_DTYPES.items()}
    check_history(arrays, path, config.get("size"))
    payload = dict(arrays, config=np.array(json.dumps(config, sort_keys=True)))
    atomic_write(path, lambda f: np.savez_compressed(f, **payload))


def check_history(history: dict[str, np.ndarray], name: str, size: int | None = None) -> None:
    """Raise ValueError naming `name` if the arrays break the `.npz` contract (on a `size` grid, if given)."""
    missing = [key for key in HISTORY_DTYPES if key not in history]
    if missing:
        raise ValueError(f"{name}: missing arrays {missing}")
    steps = len(history["actions"])
    obs = history["observations"]
    if obs.ndim != 2 or obs.shape[1] not in (DARK_OBS_DIM, LIGHT_OBS_DIM):
        raise ValueError(f"{name}: observations must be (T, 4) or (T, 8), got {obs.shape}")
    expected = {"observations": (steps, obs.shape[1]), "actions": (steps,), "rewards": (steps,),
                "terminations": (steps,), "truncations": (steps,), "tasks": (steps, 4)}
    for key, shape in expected.items():
        if history[key].shape != shape:
            raise ValueError(f"{name}: {key} has shape {history[key].shape}, expected {shape}")
        if history[key].dtype.kind != np.dtype(HISTORY_DTYPES[key]).kind:
            raise ValueError(f"{name}: {key} has dtype {history[key].dtype}, expected {np.dtype(HISTORY_DTYPES[key])}")
    if steps == 0:
        raise ValueError(f"{name}: the history is empty")
    # values, so that a bad file fails here rather than deep inside training
    if history["actions"].min() < 0 or history["actions"].max() >= NUM_ACTIONS:
        raise ValueError(f"{name}: actions outside 0..{NUM_ACTIONS - 1}")
    if not np.isin(history["rewards"], (0.0, 1.0)).all():
        raise ValueError(f"{name}: rewards other than 0 and 1")
    if not (np.isfinite(obs).all() and obs.min() >= 0 and obs.max() <= 1):  # NaN fails every comparison
        raise ValueError(f"{name}: observations that are NaN or outside [0, 1]")
    cells = history["tasks"]
    if cells.min() < 0 or (size is not None and cells.max() > validate_size(size) - 1):
        raise ValueError(f"{name}: task cells outside the {size}x{size} grid" if size else f"{name}: negative task cells")


def load_history(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """Read and check one learning history. Returns `(arrays, config)`; raises ValueError if corrupt."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as e:
        raise ValueError(f"{path}: not a readable .npz learning history ({type(e).__name__}: {e})") from None
    if "config" not in arrays:
        raise ValueError(f"{path}: missing the 'config' entry")
    try:
        config = json.loads(str(arrays.pop("config")))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: config is not JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: config is not a JSON object")
    check_history(arrays, path, config.get("size"))
    return arrays, config


# ----------------------------------------------------------------------------------------------
# Episodes of a stream of steps
# ----------------------------------------------------------------------------------------------
def episode_returns(rewards: np.ndarray, dones: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns of the completed episodes of one stream and the step index at which each ended."""
    ends = np.flatnonzero(dones)
    cumulative = np.concatenate([[0.0], np.cumsum(rewards, dtype=np.float64)])
    starts = np.concatenate([[0], ends[:-1] + 1])
    return cumulative[ends + 1] - cumulative[starts], ends


def first_solved_step(rewards: np.ndarray, dones: np.ndarray) -> int | None:
    """The env step (1-based) at which one stream has first solved its task (see `SOLVED_RETURN`), or None."""
    returns, ends = episode_returns(rewards, dones)
    return first_reaching(returns, ends + 1)


def first_reaching(returns: np.ndarray, end_steps: np.ndarray) -> int | None:
    """`end_steps` of the episode at which the mean of the last `SOLVED_WINDOW` returns first
    reaches `SOLVED_RETURN`, or None."""
    if len(returns) < SOLVED_WINDOW:
        return None
    moving = np.convolve(returns, np.ones(SOLVED_WINDOW) / SOLVED_WINDOW, mode="valid")
    hits = np.flatnonzero(moving >= SOLVED_RETURN - 1e-9)
    return int(end_steps[hits[0] + SOLVED_WINDOW - 1]) if len(hits) else None


def stream_episodes(rewards: np.ndarray, dones: np.ndarray, lengths: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The completed episodes of N streams, rewards and dones (N, T) (stream i uses its first
    `lengths[i]` steps), as flat arrays: "env" (stream index), "return", "end_step" (1-based): the
    layout of every evaluation file."""
    episodes: dict[str, list] = {"env": [], "return": [], "end_step": []}
    for i in range(len(rewards)):
        steps = rewards.shape[1] if lengths is None else int(lengths[i])
        returns, ends = episode_returns(rewards[i, :steps], dones[i, :steps])
        episodes["env"].append(np.full(len(returns), i, dtype=np.int64))
        episodes["return"].append(returns.astype(np.float32))
        episodes["end_step"].append(ends.astype(np.int64) + 1)
    return {key: np.concatenate(parts) if parts else np.zeros(0) for key, parts in episodes.items()}


def early_return(episodes: dict[str, np.ndarray], num_envs: int, steps: int = 500) -> np.ndarray:
    """(num_envs,) each env's mean return over the episodes that ended within its first `steps`
    steps (NaN where none did): how well a policy does on a new task early on."""
    early = episodes["end_step"] <= steps
    sums = np.bincount(episodes["env"][early], weights=episodes["return"][early], minlength=num_envs)
    counts = np.bincount(episodes["env"][early], minlength=num_envs)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


# ----------------------------------------------------------------------------------------------
# Command-line entry shared by the scripts
# ----------------------------------------------------------------------------------------------
def run_cli(main: Callable[[Any], Any], args_type: type) -> None:
    """Parse `args_type` with tyro and call `main`; user errors become one line on stderr, exit 2."""
    import tyro

    args = tyro.cli(args_type)
    try:
        main(args)
    except (ValueError, OSError) as e:
        print(f"{os.path.basename(sys.argv[0])}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{os.path.basename(sys.argv[0])}: interrupted", file=sys.stderr)
        sys.exit(130)


for _env_id, _light in (("KeyDoor-Dark-v0", False), ("KeyDoor-Light-v0", True)):
    if _env_id not in gym.registry:
        gym.register(_env_id, entry_point=KeyDoorEnv, kwargs={"light": _light})
