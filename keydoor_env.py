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

The env renders itself as text ("ansi") or as coloured cells ("rgb_array"); the pictures of an agent learning
in context (its path, the key and door once found) are drawn by ad_eval.py, beside the video code.

Importing this module registers `KeyDoor-Dark-v0` and `KeyDoor-Light-v0` with gymnasium.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import io
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
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
        self.single_observation_space = gym.spaces.Box(
            0.0, 1.0, (LIGHT_OBS_DIM if light else DARK_OBS_DIM,), np.float32
        )
        self.single_action_space = gym.spaces.Discrete(NUM_ACTIONS)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._rngs: list[np.random.Generator] | None = None  # one per env, made by the first reset

    def _set_tasks(self, tasks: Any, mask: np.ndarray) -> None:
        tasks = np.asarray(tasks)
        for i in np.flatnonzero(mask):  # each row checked: a task of another shape is refused by `validate_task`
            self.tasks[i] = validate_task(tasks[i], self.size)
        self._sync_tasks()

    def _draw_tasks(self, envs: np.ndarray) -> None:
        for i in envs:  # a Python loop only over envs that draw: each owns its generator
            self.tasks[i] = self.pool[self._rngs[i].integers(len(self.pool))]
        self._sync_tasks()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        options = options or {}
        if isinstance(seed, (list, tuple, np.ndarray)):  # one seed per env, as SyncVectorEnv takes
            self._rngs = [np.random.default_rng(int(s)) for s in seed]
        elif seed is not None:
            # default_rng(s) is gymnasium's seeding.np_random(s), the generator of `KeyDoorEnv.reset(seed=s)`
            self._rngs = [np.random.default_rng(seed + i) for i in range(self.num_envs)]
        elif self._rngs is None:
            self._rngs = [np.random.default_rng() for _ in range(self.num_envs)]
        mask = np.asarray(options.get("reset_mask", np.ones(self.num_envs, dtype=bool)), dtype=bool)
        if mask.shape != (self.num_envs,):
            raise ValueError(f"reset_mask must have shape ({self.num_envs},), got {mask.shape}")
        if options.get("tasks") is not None:
            self._set_tasks(options["tasks"], mask)
        else:
            # an env without a task yet has the row (0, 0, 0, 0), never a valid task
            self._draw_tasks(np.flatnonzero(mask & (self.resample | ~self.tasks.any(axis=1))))
        self._restart(mask)
        return self._obs(), {"task": self.tasks.copy()}

    def step(self, actions):
        if self._rngs is None:
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


class KeyDoorEnv(gym.Env):
    """Dark- or Light-Key-To-Door as a `gymnasium.Env`: one env of a `KeyDoorVectorEnv`, without autoreset.
    `task`: fixed, or None to draw one from `split` at the first reset; `resample`: draw a new one at every
    reset (1xN); `render_mode`: None, "ansi" (the grid as text, y up: "." floor, "K" key until picked up, "D" door,
    "A" agent, "a" with the key) or "rgb_array" (the same grid as coloured cells, `CELL_PIXELS` pixels a side;
    ad_eval.py draws the richer pictures of its videos). `reset(options={"task": t})` sets the task (kept if fixed)."""

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}
    # the "rgb_array" colour of each character of the "ansi" grid
    CELL_COLORS = {".": (240, 240, 240), "D": (150, 85, 40), "K": (235, 175, 0), "A": (25, 55, 185), "a": (90, 40, 150)}
    CELL_PIXELS = 24

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
        return obs[0], {"task": self.task}

    def step(self, action):
        if self.task is None:
            raise RuntimeError("call reset() before step()")
        if not isinstance(action, (int, np.integer)) or isinstance(action, bool) or not 0 <= action < NUM_ACTIONS:
            raise ValueError(f"action must be an integer in 0..{NUM_ACTIONS - 1}, got {action!r}")
        reward, terminated, truncated = self._env._advance(np.array([action]))
        return self._env._obs()[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), {}

    def render(self):
        if self.render_mode is None:
            return None
        (x, y) = self._pos
        has_key = bool(self._env.has_key[0])
        grid = np.full((self.size, self.size), ".")  # grid[y, x]
        if self.task is not None:
            key_x, key_y, door_x, door_y = self.task
            grid[door_y, door_x] = "D"
            if not has_key:
                grid[key_y, key_x] = "K"
        grid[y, x] = "a" if has_key else "A"
        rows = grid[::-1]  # y up: the first row is y = size - 1
        if self.render_mode == "ansi":
            return "\n".join("".join(row) for row in rows) + f"\nt={self._env.t[0]} has_key={has_key}\n"
        cells = np.array([[self.CELL_COLORS[char] for char in row] for row in rows], dtype=np.uint8)  # (size, size, 3)
        return cells.repeat(self.CELL_PIXELS, axis=0).repeat(self.CELL_PIXELS, axis=1)


class TorchVectorEnv(_Rules):
    """`KeyDoorVectorEnv` with fixed tasks in torch, on any device (a GPU step needs no round trip to the host):
    the same SAME_STEP autoreset and, step for step, exactly its values. `step` returns `(observations, rewards,
    terminations, truncations, final_observations)` as tensors, the last as `final_observations()` for numpy."""

    def __init__(self, tasks: Any, size: int, light: bool, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        tasks = np.stack([validate_task(task, size) for task in tasks])  # (N, 4); `size`: a grid the caller checked
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


# ---------------------------------------------------------------- tasks and their splits
def validate_size(size: int) -> int:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 3:
        raise ValueError(f"grid size must be an integer >= 3, got {size!r}")
    if size > MAX_SIZE:
        raise ValueError(f"grid size {size} is larger than {MAX_SIZE}: the task split enumerates all size**4 tasks")
    return int(size)


def validate_task(task: Any, size: int) -> np.ndarray:
    """Return `task` as an int64 array `(key_x, key_y, door_x, door_y)` of a `size` grid (a valid size), or raise
    ValueError."""
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
    """Every valid task of a grid (a valid size: `task_split` checks it), (n, 4) int64, in lexicographic order."""
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


# ---------------------------------------------------------------- the `.npz` learning-history contract
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


def history_paths(folder: str) -> list[str]:
    """The `.npz` histories of a dataset folder, sorted; an empty folder is an error (a missing one, the OS's)."""
    # regular files only: a FIFO named like a history would block its read
    names = sorted(
        n
        for n in os.listdir(folder)
        if n.endswith(".npz") and not n.startswith(".") and os.path.isfile(f"{folder}/{n}")
    )
    if not names:
        raise ValueError(f"dataset folder {folder} holds no .npz histories")
    return [os.path.join(folder, name) for name in names]


def save_history(path: str, history: dict[str, np.ndarray], config: dict) -> None:
    """Check one learning history against the contract and write it atomically as `.npz`."""
    arrays = {key: np.asarray(history[key], dtype=dtype) for key, dtype in HISTORY_DTYPES.items()}
    check_history(arrays, path, _config_size(config, path))
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays, config=np.array(json.dumps(config, sort_keys=True))))


def check_history(history: dict[str, np.ndarray], name: str, size: int) -> None:
    """Raise ValueError naming `name` if the arrays break the `.npz` contract on a `size` grid (`_config_size`'s):
    the checks that catch a file that would train silently wrong, not only one that would crash."""
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
        if history[key].dtype != np.dtype(dtype):  # float16 observations would fall off the grid's cells
            raise ValueError(f"{name}: {key} has dtype {history[key].dtype}, expected {np.dtype(dtype)}")
    if steps == 0:
        raise ValueError(f"{name}: the history is empty")
    # values, so that a file that would train silently wrong fails here, naming itself
    dones = history["terminations"] | history["truncations"]
    (returns, ends) = episode_returns(history["rewards"], dones)
    lengths = np.diff(np.concatenate([[-1], ends, [steps - 1]]))  # (episodes + 1,) the unfinished last one too
    codes = obs * obs_scale(size, obs.shape[1])  # (T, D) integers on this grid; another grid's fall between them
    check_flags(
        [
            (np.isin(history["actions"], range(NUM_ACTIONS)).all(), f"{name}: actions outside 0..{NUM_ACTIONS - 1}"),
            (np.isin(history["rewards"], (0.0, 1.0)).all(), f"{name}: rewards other than 0 and 1"),
            (
                np.isfinite(obs).all() and obs.min() >= 0 and obs.max() <= 1,  # NaN fails every comparison
                f"{name}: observations that are NaN or outside [0, 1]",
            ),
            (
                np.allclose(codes, np.rint(codes), atol=1e-4),
                f"{name}: observations off the cells of the {size}x{size} grid its config names",
            ),
            (
                history["tasks"].min() >= 0 and history["tasks"].max() <= size - 1,
                f"{name}: task cells outside the {size}x{size} grid",
            ),
            (
                not (history["tasks"][:, :2] == history["tasks"][:, 2:]).all(axis=1).any(),
                f"{name}: a task with its key on its door's cell",
            ),
            ((returns <= 2).all(), f"{name}: an episode whose return is above 2 (one key, one door)"),
            ((lengths <= EPISODE_STEPS).all(), f"{name}: an episode longer than {EPISODE_STEPS} steps"),
            (
                (history["rewards"][history["terminations"]] == 1).all(),
                f"{name}: a termination without the door's reward",
            ),
            (
                not (history["terminations"] & history["truncations"]).any(),
                f"{name}: a step both terminated and truncated",
            ),
        ]
    )


def load_history(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """Read and check one learning history. Returns `(arrays, config)`; anything wrong with the file (missing,
    damaged, breaking the contract) raises a ValueError of one line naming it."""
    try:
        with np.load(path, allow_pickle=False) as data:
            # reading each member decompresses it here, so that a corrupted stream fails inside this `try`
            arrays = {key: data[key] for key in data.files}
        config = json.loads(str(arrays.pop("config")))  # KeyError without one, JSONDecodeError if not JSON
    except Exception as e:  # whatever the zip, zlib or npy reader says of a damaged file (zlib.error, BadZipFile, ...)
        kind = type(e).__name__ if type(e).__module__ == "builtins" else f"{type(e).__module__}.{type(e).__name__}"
        raise ValueError(f"{path}: not a readable .npz learning history ({kind}: {' '.join(str(e).split())})") from None
    check_history(arrays, path, _config_size(config, path))
    return arrays, config


def _config_size(config: Any, name: str) -> int:
    """The grid size a history's config (any JSON value) records, checked. Every history records it: the readers
    check that their data are of one grid, and without it they could not say which."""
    try:
        return validate_size(config["size"])
    except (KeyError, TypeError, ValueError) as e:  # no "size", a config that is no JSON object, a bad size
        raise ValueError(
            f"{name}: config has no valid grid size 'size' ({type(e).__name__}: {e}); every history records the "
            "grid it was collected on"
        ) from None


# ---------------------------------------------------------------- the random policy and the evaluation file
def random_episodes(tasks: np.ndarray, size: int, steps: int, seed: int, episodes: int | None = None) -> dict:
    """The uniform-random policy for `steps` steps on each of `tasks` (each env stopped after its `episodes`-th
    episode, if given: an RL² trial), as `stream_episodes`: the floor of every evaluation file. Seeded, so every
    checkpoint evaluated with one seed is compared with the same random episodes."""
    env = KeyDoorVectorEnv(len(tasks), size=size, tasks=tasks, split="all")
    env.reset(seed=seed)
    actions = np.random.default_rng(seed).integers(0, NUM_ACTIONS, (steps, len(tasks)))  # (steps, N)
    rewards = np.zeros((len(tasks), steps), np.float32)  # (N, steps)
    dones = np.zeros((len(tasks), steps), bool)  # (N, steps)
    for t in range(steps):
        (_, rewards[:, t], terminations, truncations, _) = env.step(actions[t])
        dones[:, t] = terminations | truncations
    # an episode lasts at most 50 steps, so `steps` = 50 x `episodes` always holds the trial
    lengths = None if episodes is None else np.argmax(np.cumsum(dones, axis=1) >= episodes, axis=1) + 1
    return stream_episodes(rewards, dones, lengths)


def save_evaluation(path: str, tasks: np.ndarray, episodes: dict, random: dict, meta: dict) -> None:
    """The evaluation file of ad_eval.py and rl2_train.py: the tasks, the policy's and the random policy's episodes
    (`stream_episodes`' arrays as `episode_*` and `random_episode_*`) and the settings, `meta`, as a JSON string."""
    atomic_write(
        path,
        lambda f: np.savez_compressed(
            f,
            tasks=tasks,
            **{f"episode_{key}": value for key, value in episodes.items()},
            **{f"random_episode_{key}": value for key, value in random.items()},
            meta=np.array(json.dumps(meta)),
        ),
    )


# ---------------------------------------------------------------- files written whole or not at all, and room to work
def atomic_write(path: str, write: Callable[[Any], None]) -> None:
    """Write `path` through `write(fileobj)`: into memory first, then to `<path>.<pid>.part` beside it, fsynced, then
    `os.replace`d over `path`, so that a kill leaves the old file or the new one, never half of one (a killed
    writer's `.part` stays, git-ignored; no reader takes it for a history, checkpoint or evaluation).

    A failed write removes its temp file and leaves `path` as it was. If the disk is full (errno ENOSPC or
    EDQUOT) it raises an OSError of one line naming `path`, raised from the operating system's."""
    buffer = io.BytesIO()
    write(buffer)  # a writer that fails, fails before the disk is touched
    tmp = f"{path}.{os.getpid()}.part"  # this writer's own: two writers of one path never share a temp file
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())  # on the disk before the rename: a crash cannot leave an empty `path`
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(f"{path}: the disk is full; it was left as it was: free some space and rerun") from error
        raise


def check_writable(path: str) -> None:
    """Prove, before any work, that the file `path` can be written: a probe beside it, named as `atomic_write`'s temp
    file for `path`, is written by `atomic_write` (which makes the folders; its own temp file has the longest name of
    all) and removed, so that the operating system answers for permissions, read-only mounts, names too long for the
    file system and link loops. A `path` that exists must be a regular file (a FIFO would block a read, a folder fail
    the rename after the work). A `path` ending in "/" proves a folder."""
    probe = f"{path}.{os.getpid()}.part"  # this process's own: two runs starting at once never share a probe
    try:
        atomic_write(probe, lambda f: None)
        os.remove(probe)
    except OSError as error:
        raise OSError(f"{path}: cannot write there ({error.strerror or error})") from None
    if os.path.basename(path) and os.path.lexists(path) and not os.path.isfile(path):
        raise OSError(f"{path}: cannot write there (it exists and is not a regular file); move it away")


def lock(path: str) -> Any:
    """`<path>.lock`, held: `with K.lock(path):` around a run that writes `path`, or a one-line refusal while another
    run holds it (two runs writing one checkpoint would overwrite each other). The lock is the operating system's
    (flock): it ends when the file closes, at the block's end or the process's, however the process ends, so no
    stale lock outlives a killed run; the empty lock file stays. `check_writable(path)` has made its folder."""
    # the caller's `with` closes it; a handle refused the lock holds nothing; a FIFO in its place is refused at once
    handle = open(path + ".lock", "a", opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK))
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OSError(f"{path} is being written by another run (it holds {path}.lock); wait for it to end") from None
    return handle


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


# ---------------------------------------------------------------- command-line entry shared by the scripts
def check_flags(checks: list[tuple[bool, str]]) -> None:
    """One table of flag checks per script: `checks` holds `(ok, message)` rows; the first that fails raises
    ValueError(message), which `run_cli` shows as one line before any work."""
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def run_cli(main: Callable[[Any], Any], args_type: type) -> None:
    """Parse `args_type` with tyro and call `main`; user errors become one line on stderr, exit 2."""
    import tyro

    args = tyro.cli(args_type)
    try:
        main(args)
    except (ValueError, OSError, MemoryError) as e:  # MemoryError: the scripts' "lower these flags" lines
        # one line, even where a library's message spans several
        print(
            f"{os.path.basename(sys.argv[0])}: error: {' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr
        )
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{os.path.basename(sys.argv[0])}: interrupted", file=sys.stderr)
        sys.exit(130)


for _env_id, _light in (("KeyDoor-Dark-v0", False), ("KeyDoor-Light-v0", True)):
    if _env_id not in gym.registry:
        gym.register(_env_id, entry_point=KeyDoorEnv, kwargs={"light": _light})
