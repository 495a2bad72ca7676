"""Key-To-Door grid worlds (Dark and Light) as a gymnasium env, a numpy and a torch vector env, the task
splits, and the `.npz` learning-history contract that every stage of keydoor-ad reads and writes.

Rules (the Algorithm Distillation report's Dark-Key-To-Door):
- a `size` x `size` room with walls at the border; the agent starts every episode in cell (0, 0);
- 5 actions: 0 stay, 1 right (+x), 2 left (-x), 3 up (+y), 4 down (-y); moving into a wall is a stay;
- +1 the first time the agent enters the key cell (it then holds the key), +1 when it enters the door cell
  while holding the key, which terminates the episode; the door without the key does nothing;
- truncation after exactly 50 steps (`EPISODE_STEPS`).

A task is `(key_x, key_y, door_x, door_y)` in grid cells; key and door are distinct cells and neither is
the start cell. Observations are float32 in [0, 1]: `[agent_x, agent_y, has_key, t / 50]` with positions
divided by `size - 1` (Dark); Light appends `[key_x, key_y, door_x, door_y]` scaled the same way, so
`obs[..., :4]` of a Light observation is exactly the Dark one.

`draw_grid` draws the grid, the agent's path and the key and door once found as an RGB image (the env's
"rgb_array" render, and the frames of an animated GIF of an agent learning in context).

Importing this module registers `KeyDoor-Dark-v0` and `KeyDoor-Light-v0` with gymnasium.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import shutil
import socket
import struct
import sys
import tempfile
import time
import tokenize
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

EPISODE_STEPS = 50  # steps per episode before truncation (the report's 50; the t/50 feature uses it)
NUM_ACTIONS = 5
ACTION_DELTAS = np.array([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]], dtype=np.int64)  # (5, 2): dx, dy
DARK_OBS_DIM = 4  # agent x, agent y, has_key, t / 50
LIGHT_OBS_DIM = 8  # the Dark features, then key x, key y, door x, door y
HELD_OUT_FRACTION = 0.1  # share of all valid tasks held out for evaluation (validation and test), at every size
VALIDATION_TASKS = 20  # held-out tasks in the fixed validation split (at most half the held-out ones on tiny grids)
# a learner has solved its task once `SOLVED_WINDOW` consecutive episodes average `SOLVED_RETURN`
SOLVED_RETURN = 1.8
SOLVED_WINDOW = 10
# the largest grid: the task split enumerates all size**4 (key, door) pairs (1M at 32; 100M at 100 fills memory)
MAX_SIZE = 32


# ---------------------------------------------------------------- tasks and their splits
def validate_size(size: int) -> int:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 3:
        raise ValueError(f"grid size must be an integer >= 3, got {size!r}")
    if size > MAX_SIZE:
        raise ValueError(f"grid size {size} is larger than {MAX_SIZE}: the task split enumerates all size**4 tasks")
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
    cells = [(x, y) for x in range(size) for y in range(size) if (x, y) != (0, 0)]
    return np.array([key + door for key in cells for door in cells if key != door], dtype=np.int64)


@functools.cache
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
    splits = {
        "train": tasks[np.sort(order[num_held_out:])],
        "validation": shuffled[:num_validation],
        "test": shuffled[num_validation:],
        "all": tasks,
    }
    for array in splits.values():
        array.flags.writeable = False
    return splits


def task_split(size: int, split: str) -> np.ndarray:
    """The tasks of one split of a grid, (n, 4) int64, read-only, the same on every machine: "train" (about
    90% of all tasks; collection and training use only these), "validation" (`VALIDATION_TASKS` held-out
    tasks, fewer on tiny grids, for choosing settings), "test" (the other held-out tasks, for reporting
    results) or "all"."""
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
        raise ValueError(
            f"{num} evaluation envs: the {split} split of the {size}x{size} grid holds {len(tasks)} tasks "
            f"(ask for 1..{len(tasks)})"
        )
    if split == "test":
        tasks = tasks[np.random.default_rng(seed).permutation(len(tasks))]
    return tasks[:num].copy()


def obs_scale(size: int, obs_dim: int) -> np.ndarray:
    """(obs_dim,) float32: observation = integer features / scale (cells, has_key, t, task cells)."""
    return np.array([size - 1, size - 1, 1, EPISODE_STEPS] + [size - 1] * 4, dtype=np.float32)[:obs_dim]


# ---------------------------------------------------------------- the rules, shared by the three envs
class _Rules:
    """The state of N envs as integer arrays, numpy or torch (the same expressions run on both): `cell`
    (x * size + y, so that a move is one lookup in `_next_cell`), `has_key`, `t`, and each env's task."""

    def _init_rules(self, tasks: np.ndarray, size: int, light: bool, to: Callable[[np.ndarray], Any]) -> None:
        self.tasks = tasks
        self.num_envs = len(tasks)
        self.size = size
        self.light = light
        self._to = to
        cells = np.arange(size * size)
        xy = np.stack([cells // size, cells % size], axis=1)  # (cells, 2)
        moved = np.clip(xy[:, None, :] + ACTION_DELTAS[None, :, :], 0, size - 1)  # (cells, 5, 2)
        self._next_cell = to(moved[..., 0] * size + moved[..., 1])  # (cells, 5)
        self._cell_xy = to((xy / (size - 1)).astype(np.float32))  # (cells, 2) scaled positions
        self._time = to((np.arange(EPISODE_STEPS + 1) * (1.0 / EPISODE_STEPS)).astype(np.float32))  # (51,) t / 50
        self._sync_tasks()
        self.cell = to(np.zeros(self.num_envs, dtype=np.int64))
        self.t = to(np.zeros(self.num_envs, dtype=np.int64))
        self.has_key = to(np.zeros(self.num_envs, dtype=bool))

    def _sync_tasks(self) -> None:  # what is derived from `tasks`: key and door cells, Light features
        self._key_cell = self._to(self.tasks[:, 0] * self.size + self.tasks[:, 1])
        self._door_cell = self._to(self.tasks[:, 2] * self.size + self.tasks[:, 3])
        self._task_features = self._to((self.tasks / (self.size - 1)).astype(np.float32))  # (N, 4)

    def _obs(self):
        parts = [self._cell_xy[self.cell], self.has_key[:, None], self._time[self.t][:, None]]
        parts += [self._task_features] if self.light else []
        return torch.cat(parts, 1) if torch.is_tensor(self.cell) else np.concatenate(parts, 1, dtype=np.float32)

    def _advance(self, actions):
        """Move every env one step (no autoreset); returns `(rewards, terminations, truncations)` as bools."""
        self.cell = self._next_cell[self.cell, actions]
        got_key = (self.cell == self._key_cell) & ~self.has_key
        # key != door, so an env cannot pick up the key and open the door in the same step
        terminations = (self.cell == self._door_cell) & self.has_key
        self.has_key |= got_key
        self.t += 1
        return got_key | terminations, terminations, (self.t >= EPISODE_STEPS) & ~terminations

    def _restart(self, mask) -> None:
        # products rather than masked assignment: on a GPU a boolean index would wait for the host
        keep = ~mask
        self.cell = self.cell * keep
        self.has_key = self.has_key & keep
        self.t = self.t * keep


class KeyDoorVectorEnv(_Rules, VectorEnv):
    """N Key-To-Door envs stepped with array operations in one call (gymnasium VectorEnv API).

    `tasks`: None (each env draws one from `split` at its first reset) or (N, 4); `resample`: a bool or (N,)
    bools (True: a new task at every reset, 1xN; False: keep it, Nx1). Autoreset is SAME_STEP: an env that
    ends is reset inside `step`, which returns the first observation of its next episode (what the agent sees
    before its next action, as in the `.npz` contract) and the last one of the finished episode in
    `infos["final_obs"]` (rows where `infos["_final_obs"]`). `reset(seed=s)` seeds env i's own generator with
    `s + i` (or `s[i]`): env i matches `KeyDoorEnv` reset with `s + i` draw for draw. `reset(options=...)`
    takes "tasks" ((N, 4), kept in fixed mode) and "reset_mask" ((N,) bools: reset only those envs).
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(
        self,
        num_envs: int,
        size: int = 9,
        light: bool = False,
        tasks: Any = None,
        resample: Any = False,
        split: str = "train",
    ):
        if not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        self._init_rules(np.zeros((num_envs, 4), dtype=np.int64), validate_size(size), bool(light), to=np.asarray)
        self.pool = task_split(self.size, split)
        self.resample = np.broadcast_to(np.asarray(resample, dtype=bool), (self.num_envs,)).copy()
        if tasks is not None:
            self._set_tasks(tasks, np.ones(self.num_envs, dtype=bool))
        obs_dim = LIGHT_OBS_DIM if light else DARK_OBS_DIM
        self.single_observation_space = gym.spaces.Box(0.0, 1.0, (obs_dim,), np.float32)
        self.single_action_space = gym.spaces.Discrete(NUM_ACTIONS)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.render_mode = None
        self._rngs: list[np.random.Generator] | None = None
        self._started = False

    def _set_tasks(self, tasks: Any, mask: np.ndarray) -> None:
        tasks = np.asarray(tasks)
        if tasks.shape != (self.num_envs, 4):
            raise ValueError(f"tasks must have shape ({self.num_envs}, 4), got {tasks.shape}")
        for i in np.flatnonzero(mask):
            self.tasks[i] = validate_task(tasks[i], self.size)
        self._sync_tasks()

    def _draw_tasks(self, envs: np.ndarray) -> None:
        for i in envs:  # a Python loop only over envs that draw: each owns its generator
            self.tasks[i] = self.pool[self._rngs[i].integers(len(self.pool))]
        self._sync_tasks()

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
            # an env without a task yet has the row (0, 0, 0, 0), never a valid task
            self._draw_tasks(np.flatnonzero(mask & (self.resample | ~self.tasks.any(axis=1))))
        self._restart(mask)
        self._started = True
        return self._obs(), {"task": self.tasks.copy()}

    def step(self, actions):
        if not self._started:
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or actions.dtype.kind not in "iu":
            raise ValueError(
                f"actions must be {self.num_envs} integers, got shape {actions.shape} dtype {actions.dtype}"
            )
        if actions.min() < 0 or actions.max() >= NUM_ACTIONS:
            raise ValueError(f"actions must lie in 0..{NUM_ACTIONS - 1}, got {actions.min()}..{actions.max()}")
        rewards, terminations, truncations = self._advance(actions)
        done = terminations | truncations
        infos: dict[str, Any] = {}
        if done.any():
            infos["final_obs"] = self._obs()
            infos["_final_obs"] = done
            self._draw_tasks(np.flatnonzero(done & self.resample))
            self._restart(done)
        return self._obs(), rewards.astype(np.float32), terminations, truncations, infos


# ---------------------------------------------------------------- pictures of the grid
RENDER_COLORS = {
    "floor": (240, 240, 240),
    "grid": (205, 205, 205),
    "wall": (70, 70, 70),
    "path": (190, 212, 242),
    "trail": (95, 140, 215),
    "key": (235, 175, 0),
    "door": (150, 85, 40),
    "agent": (25, 55, 185),
}
"""RGB colours of `draw_grid`: floor cells, the lines between cells, the wall around the room, cells on the agent's
path, the line of its moves, the key, the door, the agent."""


def draw_grid(
    size: int,
    position: Any,
    task: Any,
    path: Any = None,
    key_found: bool = False,
    door_found: bool = False,
    has_key: bool = False,
    scale: int = 24,
) -> np.ndarray:
    """An RGB picture of the grid, uint8 (size * scale, size * scale, 3), y up as in the "ansi" render (the image's
    top row of cells is y = size - 1). `position`: the agent's cell (x, y). `task`: (key_x, key_y, door_x, door_y),
    or None. `path`: the cells the agent visited, oldest first, (n, 2) of (x, y) (None: none); they are tinted, and
    each move between neighbouring cells is drawn as a line (a jump, such as the return to the start cell after an
    episode, is not). The key and the door are drawn only once `key_found` / `door_found`: a Dark agent sees neither
    until it steps on it. `has_key`: a key-coloured dot on the agent. `scale`: pixels per cell."""
    size = validate_size(size)
    if not isinstance(scale, (int, np.integer)) or isinstance(scale, bool) or scale < 4:
        raise ValueError(f"scale must be an integer >= 4 (pixels per cell), got {scale!r}")
    scale = int(scale)
    x, y = _cells([position], size, "position")[0]
    visited = np.zeros((0, 2), dtype=np.int64) if path is None else _cells(path, size, "path")
    image = np.empty((size * scale, size * scale, 3), dtype=np.uint8)
    image[:] = RENDER_COLORS["floor"]
    image[::scale, :] = RENDER_COLORS["grid"]  # the first pixel row and column of every cell
    image[:, ::scale] = RENDER_COLORS["grid"]

    # each distinct cell and move drawn once: a frame of a long rollout costs what a short one does
    for cell_x, cell_y in np.unique(visited, axis=0):
        _fill_cell(image, cell_x, cell_y, size, scale, 1, RENDER_COLORS["path"])
    steps = np.concatenate([visited[:-1], visited[1:]], axis=1)  # (n - 1, 4): x0, y0, x1, y1
    is_move = np.abs(steps[:, 2:] - steps[:, :2]).sum(axis=1) == 1  # staying draws nothing, a jump is no move
    width = max(1, scale // 8)
    for x0, y0, x1, y1 in np.unique(steps[is_move], axis=0):
        _draw_move(image, (x0, y0), (x1, y1), size, scale, width)

    if task is not None:
        key_x, key_y, door_x, door_y = validate_task(task, size)
        if door_found:
            _fill_cell(image, door_x, door_y, size, scale, 1, RENDER_COLORS["door"])
        if key_found:
            _fill_cell(image, key_x, key_y, size, scale, max(2, scale // 4), RENDER_COLORS["key"])

    _fill_disk(image, x, y, size, scale, 0.35 * scale, RENDER_COLORS["agent"])
    if has_key:
        _fill_disk(image, x, y, size, scale, 0.15 * scale, RENDER_COLORS["key"])
    border = max(1, scale // 12)  # the wall around the room
    image[:border] = RENDER_COLORS["wall"]
    image[-border:] = RENDER_COLORS["wall"]
    image[:, :border] = RENDER_COLORS["wall"]
    image[:, -border:] = RENDER_COLORS["wall"]
    return image


def _cells(cells: Any, size: int, name: str) -> np.ndarray:
    """`cells` as int64 (n, 2) of (x, y) inside the grid, or a ValueError naming `name`."""
    array = np.asarray(cells)
    if array.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if array.ndim != 2 or array.shape[1] != 2 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be integer cells (x, y), got shape {array.shape} dtype {array.dtype}")
    if array.min() < 0 or array.max() > size - 1:
        raise ValueError(f"{name} has cells outside the {size}x{size} grid (cells 0..{size - 1})")
    return array.astype(np.int64)


def _cell_pixels(x: int, y: int, size: int, scale: int) -> tuple[int, int]:
    """The top-left pixel (row, column) of cell (x, y): y grows upwards, image rows downwards."""
    return (size - 1 - int(y)) * scale, int(x) * scale


def _fill_cell(image: np.ndarray, x: int, y: int, size: int, scale: int, inset: int, color: tuple) -> None:
    """Cell (x, y) filled but for `inset` pixels at its edges (1: all but the grid lines)."""
    (row, column) = _cell_pixels(x, y, size, scale)
    image[row + inset : row + scale - inset + 1, column + inset : column + scale - inset + 1] = color


def _draw_move(image: np.ndarray, start: tuple, end: tuple, size: int, scale: int, width: int) -> None:
    """A line of `width` pixels from the centre of cell `start` to the centre of its neighbour `end`."""
    (row0, column0) = _cell_pixels(*start, size, scale)
    (row1, column1) = _cell_pixels(*end, size, scale)
    half = scale // 2
    top = min(row0, row1) + half - width // 2
    left = min(column0, column1) + half - width // 2
    bottom = max(row0, row1) + half - width // 2 + width
    right = max(column0, column1) + half - width // 2 + width
    image[top:bottom, left:right] = RENDER_COLORS["trail"]


def _fill_disk(image: np.ndarray, x: int, y: int, size: int, scale: int, radius: float, color: tuple) -> None:
    """A disk of `radius` pixels at the centre of cell (x, y)."""
    (row, column) = _cell_pixels(x, y, size, scale)
    centre = scale / 2
    offsets = np.arange(scale) + 0.5 - centre  # pixel centres relative to the cell's centre
    inside = offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2  # (scale, scale)
    image[row : row + scale, column : column + scale][inside] = color


class KeyDoorEnv(gym.Env):
    """Dark- or Light-Key-To-Door as a `gymnasium.Env`: one env of a `KeyDoorVectorEnv`, without autoreset.
    `task`: fixed, or None to draw one from `split` at the first reset; `resample`: draw a new one at every
    reset (1xN); `render_mode`: None, "ansi" (text) or "rgb_array" (`draw_grid`'s picture of this episode so far,
    the key and the door shown). `reset(options={"task": t})` sets the task (kept if fixed)."""

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(
        self,
        size: int = 9,
        light: bool = False,
        task: Any = None,
        resample: bool = False,
        split: str = "train",
        render_mode: str | None = None,
    ):
        self._env = KeyDoorVectorEnv(1, size, light, resample=bool(resample), split=split)
        self.size = self._env.size
        self.light = self._env.light
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None, 'ansi' or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self._path: list[tuple[int, int]] = []  # this episode's cells, for the "rgb_array" render
        if task is not None:
            self._env._set_tasks([validate_task(task, self.size)], np.ones(1, dtype=bool))
        self.observation_space = self._env.single_observation_space
        self.action_space = self._env.single_action_space

    @property
    def task(self) -> np.ndarray | None:
        """The task in force, (4,) int64, or None before the first reset draws one."""
        return self._env.tasks[0].copy() if self._env.tasks[0].any() else None

    @property
    def _pos(self) -> list[int]:
        """The agent's cell [x, y]."""
        return list(divmod(int(self._env.cell[0]), self.size))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._env._rngs = [self.np_random]  # draws come from gymnasium's seeded generator
        task = (options or {}).get("task")
        obs, _ = self._env.reset(options=None if task is None else {"tasks": [validate_task(task, self.size)]})
        self._path = [(0, 0)]
        return obs[0], {"task": self.task}

    def step(self, action):
        if self.task is None:
            raise RuntimeError("call reset() before step()")
        if not isinstance(action, (int, np.integer)) or isinstance(action, bool) or not 0 <= action < NUM_ACTIONS:
            raise ValueError(f"action must be an integer in 0..{NUM_ACTIONS - 1}, got {action!r}")
        reward, terminated, truncated = self._env._advance(np.array([action]))
        if self.render_mode == "rgb_array":  # only a picture needs the path: the plain step stays as fast
            self._path.append(tuple(self._pos))
        return self._env._obs()[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), {}

    def render(self):
        if self.render_mode == "ansi":
            return self._render_text()
        if self.render_mode == "rgb_array":
            return draw_grid(
                self.size,
                self._pos,
                self.task,
                path=self._path,
                key_found=True,
                door_found=True,
                has_key=bool(self._env.has_key[0]),
            )
        return None

    def _render_text(self) -> str:
        (x, y) = self._pos
        has_key = bool(self._env.has_key[0])
        grid = [["."] * self.size for _ in range(self.size)]  # grid[y][x]
        if self.task is not None:
            key_x, key_y, door_x, door_y = self.task
            grid[door_y][door_x] = "D"
            if not has_key:
                grid[key_y][key_x] = "K"
        grid[y][x] = "a" if has_key else "A"
        return "\n".join("".join(row) for row in reversed(grid)) + f"\nt={self._env.t[0]} has_key={has_key}\n"


class TorchVectorEnv(_Rules):
    """`KeyDoorVectorEnv` with fixed tasks in torch, on any device (a GPU step needs no round trip to the host):
    the same SAME_STEP autoreset and, step for step, exactly its values. `step` returns `(observations, rewards,
    terminations, truncations, final_observations)` as tensors, the last as `final_observations()` for numpy."""

    def __init__(self, tasks: Any, size: int, light: bool, device: torch.device | str = "cpu"):
        size = validate_size(size)
        self.device = torch.device(device)
        tasks = np.asarray(tasks)
        if tasks.ndim != 2 or tasks.shape[1] != 4:
            raise ValueError(f"tasks must have shape (N, 4), got {tasks.shape}")
        tasks = np.stack([validate_task(task, size) for task in tasks])
        self._init_rules(tasks, size, bool(light), to=functools.partial(torch.as_tensor, device=self.device))

    def reset(self) -> torch.Tensor:
        self._restart(torch.ones(self.num_envs, dtype=torch.bool, device=self.device))
        return self._obs()  # (N, obs_dim)

    def step(self, actions: torch.Tensor):
        rewards, terminations, truncations = self._advance(actions)
        final = self._obs()
        self._restart(terminations | truncations)
        return self._obs(), rewards.float(), terminations, truncations, final


def final_observations(observations: np.ndarray, infos: dict) -> np.ndarray:
    """(N, obs_dim) what each env showed right after its last action: gymnasium's final observation where an
    episode just ended, else the returned one. `[:, :2]` is the cell the action led to (the door's, at the door)."""
    if "final_obs" not in infos:
        return observations
    return np.where(infos["_final_obs"][:, None], infos["final_obs"], observations)


# ---------------------------------------------------------------- the `.npz` learning-history contract, safe files
HISTORY_DTYPES = {
    "observations": np.float32,
    "actions": np.int64,
    "rewards": np.float32,
    "terminations": np.bool_,
    "truncations": np.bool_,
    "tasks": np.int64,
}
"""One learning history: T steps of observation (T, 4 or 8) seen before action (T,), then reward, terminations,
truncations (T,) and the task (T, 4) of that step; plus "config", a 0-d JSON string."""
PART_PREFIX = ".tmp-"
# A write that fails for any reason while less than this is free on its disk failed because the disk is full
# (torch.save's zip writer says only "file write failed", without an errno).
DISK_FULL_BYTES = 1 << 20


def atomic_write(path: str, write: Callable[[Any], None]) -> None:
    """Write `path` through `write(fileobj)` to a temp file beside it, then `os.replace`: a kill leaves the old
    file or the new one, never half of one. The temp name holds host and pid for `remove_stale_parts`.

    A failed write removes its temp file and leaves `path` as it was. If the disk is full (errno ENOSPC or
    EDQUOT, or any error while under `DISK_FULL_BYTES` are free) it raises an OSError (errno ENOSPC) of one line
    naming `path`, the bytes written before the disk filled and the space free."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f"{PART_PREFIX}{socket.gethostname()}-{os.getpid()}-{os.urandom(6).hex()}.part")
    f = None
    try:
        f = open(tmp, "xb")  # "x": never another writer's file; the usual permissions (umask)
        write(f)
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except BaseException as error:
        written = _bytes_written(f, tmp)
        full = isinstance(error, Exception) and _disk_full(error, folder)
        free = _free_bytes(folder)  # measured while the temp file still holds its share: what the writer met
        _discard(f, tmp)
        if full:
            kept = "the earlier file is kept" if os.path.exists(path) else "nothing was written"
            disk_full = OSError(
                f"{path}: the disk is full ({format_bytes(written)} written before the write failed, it needs "
                f"more; {format_bytes(free)} free in {folder}); {kept}: free some space and rerun"
            )
            disk_full.errno = errno.ENOSPC
            raise disk_full from error
        raise


def format_bytes(count: int | None) -> str:
    """`count` bytes for a person: "512 B", "3.4 MB", "1.2 GB", ..., in PB at most (powers of 1000); None: unknown."""
    if count is None:
        return "an unknown amount"
    if count < 1000:
        return f"{count} B"
    larger_units = ["MB", "GB", "TB", "PB"]
    unit = "kB"
    value = count / 1000
    while round(value, 1) >= 1000 and larger_units:
        unit = larger_units.pop(0)
        value /= 1000
    return f"{value:.1f} {unit}"


def _bytes_written(f: Any, tmp: str) -> int:
    """What the writer handed over so far: the file's position counts bytes still in its buffer."""
    if f is None:  # the temp file could not even be created
        return 0
    try:
        return f.tell()
    except (OSError, ValueError):  # closed, or its buffer could not be flushed
        try:
            return os.path.getsize(tmp)
        except OSError:
            return 0


def _free_bytes(folder: str) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _disk_full(error: BaseException, folder: str) -> bool:
    """Whether `error`, or an error it was raised from, says the disk is full, or the disk is nearly full now."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        cause = cause.__cause__ or cause.__context__
    free = _free_bytes(folder)
    return free is not None and free < DISK_FULL_BYTES


def _discard(f: Any, tmp: str) -> None:
    """Close and delete a failed write's temp file, whatever state the failure left it in."""
    if f is None:  # never created: nothing of ours to delete
        return
    try:
        f.close()  # flushes what is buffered: on a full disk that fails again, and the file is closed anyway
    except (OSError, ValueError):
        pass
    try:
        os.remove(tmp)
    except FileNotFoundError:
        pass


def remove_stale_parts(folder: str, max_age_s: float = 3600.0) -> list[str]:
    """Delete and return the temp files that killed writers left in `folder`: those of a process of this host
    that no longer runs, and any older than `max_age_s` (a writer on another host sharing the folder)."""
    host = socket.gethostname()
    removed = []
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        if not (name.startswith(PART_PREFIX) and name.endswith(".part")):
            continue
        path = os.path.join(folder, name)
        fields = name[len(PART_PREFIX) :].rsplit("-", 2)  # host, pid, random part
        dead = len(fields) == 3 and fields[0] == host and fields[1].isdigit() and not _process_alive(int(fields[1]))
        try:
            if dead or time.time() - os.path.getmtime(path) > max_age_s:
                os.remove(path)
                removed.append(path)
        except FileNotFoundError:
            pass  # its writer finished or removed it meanwhile
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it runs under another user
    return True


def check_writable(folder: str) -> str:
    """Prove, before any work, that files can be written in `folder` (made later if missing); creates nothing."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):  # the nearest existing folder above decides
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OSError(f"{folder}: cannot write there ({existing} is a file, not a folder)")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise OSError(f"{folder}: cannot write there ({e.strerror or type(e).__name__})") from None
    return folder


def available_memory() -> int | None:
    """Bytes of host memory a process can still take without swapping: Linux's MemAvailable; where there is no
    /proc/meminfo, the physical memory (an upper bound: what exceeds it no amount of freeing holds); else None.
    The scripts refuse, before any work, sizes whose buffers would not fit."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the kernel counts kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


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
    check_history(arrays, path, _config_size(config, path))
    payload = dict(arrays, config=np.array(json.dumps(config, sort_keys=True)))

    def write(f) -> None:
        np.savez_compressed(f, **payload)

    atomic_write(path, write)


def check_history(history: dict[str, np.ndarray], name: str, size: int | None = None) -> None:
    """Raise ValueError naming `name` if the arrays break the `.npz` contract (on a `size` grid, if given)."""
    if size is not None:
        try:
            size = validate_size(size)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    missing = [key for key in HISTORY_DTYPES if key not in history]
    if missing:
        raise ValueError(f"{name}: missing arrays {missing}")
    steps = len(history["actions"])
    obs = history["observations"]
    if obs.ndim != 2 or obs.shape[1] not in (DARK_OBS_DIM, LIGHT_OBS_DIM):
        raise ValueError(f"{name}: observations must be (T, 4) or (T, 8), got {obs.shape}")
    for key, dtype in HISTORY_DTYPES.items():
        shape = (steps, *{"observations": obs.shape[1:], "tasks": (4,)}.get(key, ()))
        if history[key].shape != shape:
            raise ValueError(f"{name}: {key} has shape {history[key].shape}, expected {shape}")
        if history[key].dtype.kind != np.dtype(dtype).kind:
            raise ValueError(f"{name}: {key} has dtype {history[key].dtype}, expected {np.dtype(dtype)}")
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
    if cells.min() < 0 or (size is not None and cells.max() > size - 1):
        raise ValueError(
            f"{name}: task cells outside the {size}x{size} grid" if size else f"{name}: negative task cells"
        )
    if (cells[:, :2] == cells[:, 2:]).all(axis=1).any():
        raise ValueError(f"{name}: a task with its key on its door's cell")


# What reading a damaged `.npz` raises: a bad zip directory or CRC, a corrupted compressed stream (zlib.error), a
# short file, an unknown compression method or an encrypted member, a mangled `.npy` header, a pickled array, or a
# header claiming more memory than there is.
NPZ_READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    OSError,
    EOFError,
    ValueError,
    KeyError,
    NotImplementedError,
    RuntimeError,
    SyntaxError,
    tokenize.TokenError,
    struct.error,
    MemoryError,
)


def load_history(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """Read and check one learning history. Returns `(arrays, config)`; raises ValueError if corrupt."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            # reading each member decompresses it here, so that a corrupted stream fails inside this `try`
            arrays = {key: data[key] for key in data.files}
    except NPZ_READ_ERRORS as e:
        message = " ".join(str(e).split())  # one line, whatever the zip or zlib library said
        kind = type(e).__name__ if type(e).__module__ == "builtins" else f"{type(e).__module__}.{type(e).__name__}"
        raise ValueError(f"{path}: not a readable .npz learning history ({kind}: {message})") from None
    try:
        config = json.loads(str(arrays.pop("config")))
    except KeyError:
        raise ValueError(f"{path}: missing the 'config' entry") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: config is not JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: config is not a JSON object")
    check_history(arrays, path, _config_size(config, path))
    return arrays, config


def _config_size(config: dict, name: str) -> int:
    """The grid size a history's config records, checked. Every history records it: the readers check that their
    data are of one grid, and without it they could not say which."""
    if "size" not in config:
        raise ValueError(
            f"{name}: config has no grid size ('size'); every history records the grid it was collected on"
        )
    try:
        return validate_size(config["size"])
    except ValueError as e:
        raise ValueError(f"{name}: config: {e}") from None


# ---------------------------------------------------------------- episodes of a stream of steps
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
    """`end_steps` of the episode at which the last `SOLVED_WINDOW` returns first average `SOLVED_RETURN`, or None."""
    if len(returns) < SOLVED_WINDOW:
        return None
    moving = np.convolve(returns, np.ones(SOLVED_WINDOW) / SOLVED_WINDOW, mode="valid")
    hits = np.flatnonzero(moving >= SOLVED_RETURN - 1e-9)
    return int(end_steps[hits[0] + SOLVED_WINDOW - 1]) if len(hits) else None


def stream_episodes(rewards: np.ndarray, dones: np.ndarray, lengths: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The completed episodes of N streams, rewards and dones (N, T) (stream i: its first `lengths[i]` steps),
    as the flat arrays of every evaluation file: "env" (stream index), "return", "end_step" (1-based)."""
    episodes: dict[str, list] = {"env": [], "return": [], "end_step": []}
    for i in range(len(rewards)):
        steps = rewards.shape[1] if lengths is None else int(lengths[i])
        returns, ends = episode_returns(rewards[i, :steps], dones[i, :steps])
        episodes["env"].append(np.full(len(returns), i, dtype=np.int64))
        episodes["return"].append(returns.astype(np.float32))
        episodes["end_step"].append(ends.astype(np.int64) + 1)
    return {key: np.concatenate(parts) if parts else np.zeros(0) for key, parts in episodes.items()}


def window_returns(episodes: dict[str, np.ndarray], num_envs: int, start: int, stop: int) -> np.ndarray:
    """(num_envs,) each env's mean return over its episodes that ended in env steps (start, stop] (NaN where none
    did): a metric per env first, then over envs."""
    inside = (episodes["end_step"] > start) & (episodes["end_step"] <= stop)
    sums = np.bincount(episodes["env"][inside], weights=episodes["return"][inside], minlength=num_envs)
    counts = np.bincount(episodes["env"][inside], minlength=num_envs)
    return np.divide(sums, counts, out=np.full(num_envs, np.nan), where=counts > 0)


def early_return(episodes: dict[str, np.ndarray], num_envs: int, steps: int = 500) -> np.ndarray:
    """(num_envs,) each env's mean return over its episodes that ended by step `steps` (NaN where none did)."""
    return window_returns(episodes, num_envs, 0, steps)


# ---------------------------------------------------------------- command-line entry shared by the scripts
def run_cli(main: Callable[[Any], Any], args_type: type) -> None:
    """Parse `args_type` with tyro and call `main`; user errors become one line on stderr, exit 2."""
    import tyro

    args = tyro.cli(args_type)
    try:
        main(args)
    except (ValueError, OSError) as e:
        message = " ".join(str(e).split())  # one line, even where a library's message spans several
        print(f"{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{os.path.basename(sys.argv[0])}: interrupted", file=sys.stderr)
        sys.exit(130)


for _env_id, _light in (("KeyDoor-Dark-v0", False), ("KeyDoor-Light-v0", True)):
    if _env_id not in gym.registry:
        gym.register(_env_id, entry_point=KeyDoorEnv, kwargs={"light": _light})
