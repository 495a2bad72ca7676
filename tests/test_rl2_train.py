"""rl2_train.py: the Transformer block shared with ad_train.py, causality, trials, PPO's update (its behaviour on
hand-made batches), end to end, held-out splits, the learning curve, bit-exact resume, a resume only under the flags
it was trained with, each flag checked on its own, errors before any work, out of memory in one line, and the rl2
dataset read by ad_train.py."""

import inspect
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import keydoor_env as K
import rl2_train as R

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL_KEYS = {
    "tasks",
    "episode_env",
    "episode_return",
    "episode_end_step",
    "random_episode_env",
    "random_episode_return",
    "random_episode_end_step",
    "meta",
}


def tiny(tmp_path, **overrides):
    flags = dict(
        size=4,
        iterations=3,
        num_envs=6,
        num_minibatches=2,
        episodes_per_trial=3,
        save_every=2,
        eval_every=2,
        eval_split="validation",
        eval_envs=3,
        n_layer=1,
        n_embd=16,
        n_head=2,
        d_ff=16,
        data_dir=str(tmp_path / "data"),
        progress=False,
        cuda=False,
    )
    flags.update(overrides)
    return R.Args(**flags)


def config(**overrides):
    fields = dict(obs_dim=K.DARK_OBS_DIM, context=20, n_layer=2, n_head=2, n_embd=16, d_ff=16, arrival=False)
    return R.ModelConfig(**{**fields, **overrides})


def files_under(folder):
    return sorted(os.path.relpath(os.path.join(d, n), folder) for d, _, names in os.walk(folder) for n in names)


def test_the_transformer_block_is_ad_train_s():
    """rl2_train.py keeps its own copy (each script is one file beside keydoor_env.py): the same text, so it cannot
    drift from ad_train.py's."""
    import ad_train as A  # here, not at the top: the rest of this file does not depend on ad_train.py

    for name in ("SelfAttention", "Block"):
        assert inspect.getsource(getattr(R, name)) == inspect.getsource(getattr(A, name)), name


@pytest.mark.parametrize("arrival", [False, True])
def test_policy_is_causal_and_cache_matches(arrival):
    torch.manual_seed(0)
    model = R.ActorCritic(config(arrival=arrival)).eval()
    g = torch.Generator().manual_seed(0)
    inputs = {
        "observations": torch.rand(2, 20, 4, generator=g),
        "prev_actions": torch.randint(0, 5, (2, 20), generator=g),
        "prev_rewards": torch.randint(0, 2, (2, 20), generator=g).float(),
        "prev_dones": torch.randint(0, 2, (2, 20), generator=g).float(),
        "prev_arrivals": torch.rand(2, 20, 2, generator=g),
    }
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
        step_logits, step_values = model(**{k: v[:, t : t + 1] for k, v in inputs.items()}, start=t, caches=caches)
        torch.testing.assert_close(step_logits[:, 0], logits[:, t], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(step_values[:, 0], values[:, t], rtol=1e-5, atol=1e-5)


def test_trials_keep_their_task_and_have_their_episodes():
    torch.manual_seed(0)
    model = R.ActorCritic(config(context=150, n_layer=1)).eval()
    tasks = K.task_split(4, "train")[:5]
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
            assert (reward, term, trunc) == (
                history["rewards"][t],
                history["terminations"][t],
                history["truncations"][t],
            )
            if t + 1 < len(history["actions"]):  # the next token holds where this action led, the door cell included
                np.testing.assert_array_equal(buf["prev_arrivals"][i, t + 1].numpy(), obs[:2])
            if term or trunc:
                obs, _ = single.reset()
    assert buf["prev_dones"][:, 0].eq(1).all()  # the first token looks like an episode start, as in AD
    assert buf["prev_arrivals"][:, 0].eq(0).all()  # before the first action the agent stands on the start cell
    # the metrics: episode by index, and the first-500 metric of keydoor_env (per env, then over envs)
    metrics = R.trial_metrics(buf, 3)
    episodes = metrics["episodes"]
    assert np.bincount(episodes["env"], minlength=5).tolist() == [3] * 5
    for k in range(3):
        np.testing.assert_allclose(metrics["by_episode"][k], episodes["return"][k::3].mean(), rtol=1e-6)
    assert metrics["first_500"] == pytest.approx(float(np.nanmean(K.window_returns(episodes, 5, 0, 500))))
    assert np.isnan(metrics["episodes_5_to_10"])  # a trial of 3 episodes has no episodes 5 to 10


def test_gae_stops_at_the_trial_end():
    buf = {
        "rewards": torch.tensor([[0.0, 1.0, 0.0]]),
        "values": torch.tensor([[0.5, 0.5, 9.0]]),
        "active": torch.tensor([[True, True, False]]),
    }
    advantages, returns = R.gae(buf, gamma=1.0, lam=1.0)
    assert returns[0, 1] == pytest.approx(1.0) and returns[0, 0] == pytest.approx(1.0)
    assert advantages[0, 2] == 0


def read_curve(path):
    with open(path) as f:
        lines = f.read().splitlines()
    return lines[0].split(","), [[float(x) for x in line.split(",")] for line in lines[1:]]


def test_end_to_end_files_curve_and_reevaluation(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    result = R.main(tiny(tmp_path))
    checkpoint = torch.load(result["checkpoint"], weights_only=True)
    assert checkpoint["version"] == R.CHECKPOINT_VERSION
    assert checkpoint["iteration"] == 3 and checkpoint["model_config"] == {
        "obs_dim": 4,
        "context": 150,
        "n_layer": 1,
        "n_head": 2,
        "n_embd": 16,
        "d_ff": 16,
        "arrival": False,
    }
    # the eval file: its name holds split and envs, the shared layout, the validation tasks
    assert result["eval"] == str(tmp_path / "data" / "eval" / "rl2__4x4__1__validation3_trial_seed1.npz")
    with np.load(result["eval"], allow_pickle=False) as f:
        assert set(f.files) == EVAL_KEYS
        meta = json.loads(str(f["meta"]))
        np.testing.assert_array_equal(f["tasks"], K.eval_tasks(4, "validation", 3, seed=1))
        assert f["tasks"].dtype == np.int64
        for prefix in ("", "random_"):  # every trial ran its 3 episodes, within the trial's steps
            assert np.bincount(f[f"{prefix}episode_env"], minlength=3).tolist() == [3, 3, 3]
            assert 1 <= f[f"{prefix}episode_end_step"].min() and f[f"{prefix}episode_end_step"].max() <= 150
        for i in range(3):  # the i-th episode of each env, averaged over envs, is the by-episode return
            np.testing.assert_allclose(
                f["episode_return"].reshape(-1, 3)[:, i].mean(), result["by_episode"][i], atol=1e-6
            )
    assert meta == {
        "algorithm": "rl2",
        "checkpoint": result["checkpoint"],
        "model_config": checkpoint["model_config"],
        "split": "validation",
        "num_envs": 3,
        "steps": 150,
        "seed": 1,
        "eval_seed": 1,  # --eval-seed 0: the tasks were chosen with --seed
        "size": 4,
        "obs": "dark",
        "episodes_per_trial": 3,
        "iteration": 3,
    }
    assert not {tuple(t) for t in K.task_split(4, "train")} & {tuple(t) for t in K.eval_tasks(4, "validation", 3, 1)}
    # the learning curve: one row per evaluation (iterations 2 and 3), the last one the printed result
    assert result["curve"] == str(tmp_path / "data" / "eval" / "rl2__4x4__1__curve.csv")
    columns, rows = read_curve(result["curve"])
    assert columns == [
        "iteration",
        "episodes",
        "first_500",
        "episodes_5_to_10",
        "episode_1",
        "episode_2",
        "episode_3",
        "minutes",
    ]
    assert [row[:2] for row in rows] == [[2, 2 * 6 * 3], [3, 3 * 6 * 3]] and 0 <= rows[0][-1] <= rows[1][-1]
    assert (
        rows[-1][2] == result["first_500"] and np.isnan(rows[-1][3]) and rows[-1][4:7] == result["by_episode"].tolist()
    )
    # the dataset chunks
    folder = tmp_path / "data" / "rl2"
    names = sorted(os.listdir(folder))
    assert (
        names[:2] == ["rl2__4x4__1__run_00000_it000001.npz", "rl2__4x4__1__run_00000_it000003.npz"] and len(names) == 12
    )
    history, history_config = K.load_history(str(folder / names[0]))
    assert history_config["algorithm"] == "rl2-ppo" and history_config["iterations"] == [1, 2]
    assert (history["terminations"] | history["truncations"]).sum() == 6  # 2 iterations x 3 episodes
    assert {tuple(t) for t in history["tasks"]} <= {tuple(t) for t in K.task_split(4, "train")}

    # a finished run rerun on test tasks: evaluates the checkpoint, trains nothing, writes its own file
    before = {name: (tmp_path / "data" / name).read_bytes() for name in files_under(tmp_path / "data")}
    capsys.readouterr()
    test = R.main(tiny(tmp_path, eval_split="test", eval_envs=5))
    assert "test tasks (5)" in capsys.readouterr().out
    assert test["eval"] == str(tmp_path / "data" / "eval" / "rl2__4x4__1__test5_trial_seed1.npz")
    assert {name: (tmp_path / "data" / name).read_bytes() for name in before} == before  # nothing else rewritten
    assert set(files_under(tmp_path / "data")) == set(before) | {"eval/rl2__4x4__1__test5_trial_seed1.npz"}
    with np.load(test["eval"], allow_pickle=False) as f:
        meta = json.loads(str(f["meta"]))
        assert (meta["split"], meta["num_envs"], meta["iteration"]) == ("test", 5, 3)
        np.testing.assert_array_equal(f["tasks"], K.eval_tasks(4, "test", 5, seed=1))
    # training on, but measured on other tasks than its curve so far: refused before any work
    with pytest.raises(
        ValueError, match="resume its training with --eval-split validation --eval-envs 3 --eval-seed 0"
    ):
        R.main(tiny(tmp_path, iterations=4, eval_split="test", eval_envs=5))
    # --eval-seed picks ad_eval.py's tasks for that seed, whatever the training seed (paired comparisons)
    other = R.main(tiny(tmp_path, eval_split="test", eval_envs=5, eval_seed=7))
    assert other["eval"].endswith("rl2__4x4__1__test5_trial_seed7.npz")
    with np.load(other["eval"], allow_pickle=False) as f:
        np.testing.assert_array_equal(f["tasks"], K.eval_tasks(4, "test", 5, seed=7))
        meta = json.loads(str(f["meta"]))
        assert (meta["seed"], meta["eval_seed"]) == (1, 7)  # trained with seed 1, its tasks chosen with seed 7
    # resume: more iterations continue from the checkpoint and the curve
    R.main(tiny(tmp_path, iterations=4))
    assert torch.load(result["checkpoint"], weights_only=True)["iteration"] == 4
    assert len(os.listdir(folder)) == 18  # a new chunk, the earlier ones kept
    assert [row[0] for row in read_curve(result["curve"])[1]] == [2, 3, 4]
    # another model under the same name is refused; --arrival-token changes the model's input
    for overrides, trained in (
        ({"n_embd": 32}, "--n-embd 16, not 32"),
        ({"arrival_token": True}, "--arrival-token False, not True"),
    ):
        with pytest.raises(ValueError, match=f"rl2__4x4__1.pt was trained with {trained}"):
            R.main(tiny(tmp_path, iterations=5, **overrides))
    arrival = R.main(tiny(tmp_path, iterations=2, arrival_token=True, exp_name="rl2-arrival"))
    assert torch.load(arrival["checkpoint"], weights_only=True)["model_config"]["arrival"] is True
    assert len(os.listdir(folder)) == 18 + 6  # its own chunks, beside the first run's


def test_ad_train_reads_the_rl2_dataset(tmp_path, monkeypatch):
    import ad_train as A  # here, not at the top: the rest of this file does not depend on ad_train.py

    monkeypatch.chdir(tmp_path)
    R.main(tiny(tmp_path, iterations=2))
    out = A.main(
        A.Args(
            dataset="rl2",
            episode_stride=1,  # a trial holds 10 episodes of one task: every 8th would put tasks side by side
            data_dir=str(tmp_path / "data"),
            context=20,
            iterations=3,
            batch_size=4,
            n_layer=1,
            n_head=2,
            n_embd=16,
            d_ff=16,
            eval_every=0,
            progress=False,
            cuda=False,
        )
    )
    assert os.path.exists(out["checkpoint"])


class Killed(Exception):
    pass


@pytest.mark.parametrize("kill_after", ["checkpoint", pytest.param("curve", marks=pytest.mark.slow)])
def test_resume_after_a_kill_is_bit_identical(tmp_path, monkeypatch, kill_after):
    """4 iterations in one go against a run killed after its checkpoint at iteration 2 (and, for "curve",
    after its evaluation at iteration 3 too, so the curve holds a row the checkpoint has not reached)."""
    monkeypatch.chdir(tmp_path)
    flags = dict(iterations=4, save_every=2, eval_every=1)
    whole = R.main(tiny(tmp_path / "whole", **flags))
    atomic_write = K.atomic_write
    writes = []

    def write_then_die(path, write):
        atomic_write(path, write)
        writes.append(os.path.basename(path))
        if writes.count("rl2__4x4__1.pt" if kill_after == "checkpoint" else "rl2__4x4__1__curve.csv") == (
            1 if kill_after == "checkpoint" else 3
        ):
            raise Killed

    monkeypatch.setattr(K, "atomic_write", write_then_die)
    with pytest.raises(Killed):
        R.main(tiny(tmp_path / "split", **flags))
    monkeypatch.setattr(K, "atomic_write", atomic_write)
    assert (
        torch.load(tmp_path / "split" / "data" / "checkpoints" / "rl2__4x4__1.pt", weights_only=True)["iteration"] == 2
    )
    if kill_after == "curve":
        assert len(read_curve(tmp_path / "split" / "data" / "eval" / "rl2__4x4__1__curve.csv")[1]) == 3
    resumed = R.main(tiny(tmp_path / "split", **flags))
    a = torch.load(whole["checkpoint"], weights_only=True)
    b = torch.load(resumed["checkpoint"], weights_only=True)
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for state_a, state_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert [row[0] for row in read_curve(resumed["curve"])[1]] == [1, 2, 3, 4]  # each evaluation once
    with open(whole["curve"]) as f, open(resumed["curve"]) as g:  # the same text, but for the minutes
        assert [line.rsplit(",", 1)[0] for line in f] == [line.rsplit(",", 1)[0] for line in g]
    data = {name: tmp_path / "whole" / "data" / name for name in files_under(tmp_path / "whole" / "data")}
    assert files_under(tmp_path / "split" / "data") == sorted(data)
    for name in data:
        if name.endswith(".npz"):  # the dataset chunks and the eval file, array for array
            with np.load(data[name]) as f, np.load(tmp_path / "split" / "data" / name) as g:
                assert f.files == g.files and all(np.array_equal(f[k], g[k]) for k in f.files if k != "meta")
    assert whole["by_episode"].tolist() == resumed["by_episode"].tolist()


def test_out_of_memory_is_one_line_naming_the_flags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a model no memory holds: the CPU allocator's own error (one attention layer 2**18 wide asks for 800 GB at once)
    with pytest.raises(
        ValueError,
        match=r"^--num-envs 6 x --episodes-per-trial 3 with --n-embd 262,144: out of memory on cpu; lower --num-envs "
        r"or --episodes-per-trial \(or raise --num-minibatches\), or --n-embd, --d-ff or --n-layer$",
    ):
        R.main(tiny(tmp_path, n_embd=2**18, n_head=1))
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()

    # trials whose caches fill the GPU: PyTorch's error in the rollout, before anything is written
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(R, "run_trials", out_of_memory)
    monkeypatch.setattr(R, "open_writer", lambda *args: None)  # no TensorBoard thread left to write after the test
    with pytest.raises(ValueError, match="^--num-envs 6 x --episodes-per-trial 3 with --n-embd 16: out of memory"):
        R.main(tiny(tmp_path))
    assert os.listdir(tmp_path / "data" / "checkpoints") == ["rl2__4x4__1.pt.lock"]  # the run's lock, nothing else
    assert all(os.listdir(tmp_path / "data" / name) == [] for name in ("rl2", "eval"))  # its folders, empty

    # any other error is not memory's: it passes on as it is
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(R, "run_trials", broken)
    with pytest.raises(RuntimeError, match="^a bug$"):
        R.main(tiny(tmp_path))


def test_a_run_that_diverges_stops_in_one_line_keeping_the_last_good_checkpoint(tmp_path, monkeypatch):
    """Issue 32: --lr 1e12 ended in a torch.distributions error; now the first non-finite update stops the run in
    one line, and the checkpoint on disk is the last finite one."""
    monkeypatch.chdir(tmp_path)
    real_writer = R.open_writer
    writers = []  # a run that raises leaves its TensorBoard writer open (the process ends); this test closes them

    def recorded_writer(*args):
        writers.append(real_writer(*args))
        return writers[-1]

    monkeypatch.setattr(R, "open_writer", recorded_writer)
    with pytest.raises(
        ValueError, match=r"training diverged: non-finite losses or weights at iteration 1; .* keeps the last"
    ):
        R.main(tiny(tmp_path, lr=1e12, exp_name="wild"))
    assert not os.path.exists(tmp_path / "data" / "checkpoints" / "wild__4x4__1.pt")
    for writer in writers:
        writer.close()


def test_a_second_run_with_the_same_checkpoint_name_is_refused(tmp_path, monkeypatch):
    """Issue 32: the first run holds its checkpoint's lock (here this test's process does); the second ends in one
    line before training, having written no checkpoint, chunk or evaluation."""
    monkeypatch.chdir(tmp_path)
    args = tiny(tmp_path)
    path = tmp_path / "data" / "checkpoints" / "rl2__4x4__1.pt"
    K.check_writable(str(path))  # makes its folder
    held = K.lock(str(path))  # noqa: F841 (held while the second run tries)
    with pytest.raises(OSError, match="rl2__4x4__1.pt is being written by another run"):
        R.main(args)
    assert os.listdir(path.parent) == ["rl2__4x4__1.pt.lock"] and os.listdir(tmp_path / "data" / "rl2") == []


def test_bad_input_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    # more eval envs than the split holds, or no such split
    held = len(K.task_split(4, "validation"))
    with pytest.raises(ValueError, match=f"validation split of the 4x4 grid holds {held} tasks"):
        R.main(tiny(tmp_path, eval_envs=held + 1))
    with pytest.raises(ValueError, match="split must be"):
        R.main(tiny(tmp_path, eval_split="train"))
    assert not data.exists() and not (tmp_path / "runs").exists()
    # an output folder that cannot be written
    data.mkdir()
    (data / "eval").write_text("a file where the eval folder goes")
    with pytest.raises(OSError, match="cannot write there"):
        R.main(tiny(tmp_path))
    assert files_under(data) == ["eval"]  # nothing written
    (data / "eval").unlink()
    # issue 32: a FIFO at the checkpoint's path blocked torch.load (a hang): refused before any work
    (data / "checkpoints").mkdir(exist_ok=True)
    os.mkfifo(data / "checkpoints" / "rl2__4x4__1.pt")
    with pytest.raises(OSError, match=r"rl2__4x4__1.pt: cannot write there \(it exists and is not a regular file\)"):
        R.main(tiny(tmp_path))
    (data / "checkpoints" / "rl2__4x4__1.pt").unlink()
    # a corrupt checkpoint (the other faults of a checkpoint: the test below), a corrupt curve
    path = data / "checkpoints" / "rl2__4x4__1.pt"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"^{path}: not a readable checkpoint of this version of rl2_train.py"):
        R.main(tiny(tmp_path))
    path.unlink()
    R.main(tiny(tmp_path, iterations=1))
    curve = data / "eval" / "rl2__4x4__1__curve.csv"
    curve.write_text("iteration,episodes\n1,18\n")
    with pytest.raises(ValueError, match="learning curve of other settings"):
        R.main(tiny(tmp_path, iterations=2))
    assert torch.load(path, weights_only=True)["iteration"] == 1 and len(os.listdir(data / "rl2")) == 6


def test_a_resume_under_another_training_flag_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    R.main(tiny(tmp_path, iterations=1))
    path = os.path.join("data", "checkpoints", "rl2__4x4__1.pt")
    before = {name: (tmp_path / name).read_bytes() for name in files_under(tmp_path)}
    for overrides, message in [
        ({"lr": 1e-3}, f"{path} was trained with --lr 0.0003, not 0.001; move it away or change --exp-name"),
        ({"num_envs": 4}, f"{path} was trained with --num-envs 6, not 4;"),
        ({"gamma": 0.9}, f"{path} was trained with --gamma 0.995, not 0.9;"),
        ({"clip_coef": 0.1}, f"{path} was trained with --clip-coef 0.2, not 0.1;"),
        ({"episodes_per_trial": 2}, f"{path} was trained with --episodes-per-trial 3, not 2;"),
    ]:
        with pytest.raises(ValueError) as refused:
            R.main(tiny(tmp_path, iterations=2, data_dir="data", **overrides))
        assert str(refused.value).startswith(message)
        # a finished run rerun only to evaluate is held to the same flags (its command repeats them)
        with pytest.raises(ValueError, match="was trained with"):
            R.main(tiny(tmp_path, iterations=1, data_dir="data", eval_split="test", **overrides))
    # nothing written: the checkpoint keeps its record, no chunk, curve, eval file or TensorBoard run was added
    assert {name: (tmp_path / name).read_bytes() for name in files_under(tmp_path)} == before
    # --iterations may grow, and --eval-every, --save-every, --progress may change: it resumes and keeps its record
    R.main(tiny(tmp_path, iterations=2, data_dir="data", eval_every=1, save_every=1))
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["iteration"] == 2
    assert all(checkpoint["args"][name] == getattr(tiny(tmp_path), name) for name in R.TRAINING_FLAGS)


def test_a_checkpoint_this_version_cannot_resume_is_refused_in_one_line_naming_it(tmp_path, monkeypatch):
    """Another version, a damaged record, damaged weights: torch.load's or load_state_dict's own error, as one line
    naming the file, and nothing written."""
    monkeypatch.chdir(tmp_path)
    result = R.main(tiny(tmp_path, iterations=1))
    path = result["checkpoint"]
    good = torch.load(path, weights_only=True)
    others = [name for name in files_under(tmp_path) if name != os.path.relpath(path, tmp_path)]
    before = {name: (tmp_path / name).read_bytes() for name in others}
    for damage in (
        lambda checkpoint: checkpoint.update(version=0),
        lambda checkpoint: checkpoint.pop("version"),
        lambda checkpoint: checkpoint["args"].pop("gae_lambda"),
        lambda checkpoint: checkpoint["model"].update({"embed.weight": torch.zeros(3, 3)}),
        lambda checkpoint: checkpoint["model"].pop("value.bias"),  # strict: a missing tensor is refused too
        lambda checkpoint: checkpoint["optimizer"]["param_groups"].clear(),
    ):
        checkpoint = torch.load(path, weights_only=True)
        damage(checkpoint)
        torch.save(checkpoint, path)
        with pytest.raises(ValueError) as refused:
            R.main(tiny(tmp_path, iterations=2))
        assert str(refused.value).startswith(f"{path}: not a readable checkpoint of this version of rl2_train.py (")
        assert "\n" not in str(refused.value)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    torch.save(good, path)  # the checkpoint as written resumes
    R.main(tiny(tmp_path, iterations=2))


def test_a_grid_too_large_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def no_tasks(*args, **kwargs):
        raise AssertionError("the task split was built for a refused size")

    monkeypatch.setattr(K, "all_tasks", no_tasks)  # size 100 would enumerate 100**4 tasks
    for size, message in [
        (100, f"--size: grid size 100 is larger than {K.MAX_SIZE}"),
        (2, "--size: grid size must be"),
    ]:
        with pytest.raises(ValueError, match=message):
            R.main(tiny(tmp_path, size=size))
    assert os.listdir(tmp_path) == []  # no folder, no TensorBoard run


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"iterations": 0}, "--iterations must be >= 1, got 0"),
        ({"num_envs": 0}, "--num-envs must be >= 1, got 0"),
        ({"episodes_per_trial": 0}, "--episodes-per-trial must be >= 1, got 0"),
        ({"lr": float("inf")}, "--lr must be a finite number > 0, got inf"),
        ({"lr": float("nan")}, "--lr must be a finite number > 0, got nan"),
        ({"lr": 0.0}, "--lr must be a finite number > 0, got 0.0"),
        ({"gamma": float("nan")}, "--gamma must lie in [0, 1], got nan"),
        ({"gamma": 1.5}, "--gamma must lie in [0, 1], got 1.5"),
        ({"gae_lambda": -0.1}, "--gae-lambda must lie in [0, 1], got -0.1"),
        ({"update_epochs": 0}, "--update-epochs must be >= 1, got 0"),
        ({"num_minibatches": 7}, "--num-minibatches must lie in 1..6 (--num-envs), got 7"),
        ({"clip_coef": float("inf")}, "--clip-coef must be a finite number > 0, got inf"),
        ({"ent_coef": float("nan")}, "--ent-coef must be a finite number >= 0, got nan"),
        ({"ent_coef": -0.01}, "--ent-coef must be a finite number >= 0, got -0.01"),
        ({"vf_coef": float("inf")}, "--vf-coef must be a finite number >= 0, got inf"),
        ({"max_grad_norm": float("nan")}, "--max-grad-norm must be a finite number > 0, got nan"),
        ({"n_layer": 0}, "--n-layer must be >= 1, got 0"),
        ({"n_head": 0}, "--n-head must be >= 1, got 0"),
        ({"n_embd": 18, "n_head": 4}, "--n-embd 18 must be a multiple of --n-head 4"),
        ({"d_ff": 0}, "--d-ff must be >= 1, got 0"),
        ({"eval_every": -1}, "--eval-every must be >= 0, got -1"),
        ({"eval_seed": -1}, "--eval-seed must be >= 0, got -1"),
        ({"save_every": 0}, "--save-every must be >= 1, got 0"),
        ({"seed": -1}, "--seed must be >= 0, got -1"),
        ({"exp_name": "a/b"}, "--exp-name must be a non-empty name without '/', got 'a/b'"),
    ],
)
def test_each_flag_is_checked_on_its_own(tmp_path, overrides, message):
    with pytest.raises(ValueError) as refused:
        R.validate(tiny(tmp_path, **overrides))
    assert str(refused.value) == message


# --- ppo_update on a hand-made batch: trials 0 and 1 act 1 and earn 1, trials 2 and 3 act 2 and earn 0
def ppo_args(**overrides):
    flags = dict(num_envs=4, num_minibatches=1, update_epochs=1, gamma=1.0, gae_lambda=1.0, ent_coef=0.0, vf_coef=0.0)
    return R.Args(**{**flags, **overrides})


def ppo_batch(model):
    """4 trials of 8 steps; trials 0-1 see observations in [0, 0.5), act 1 and are paid 1 at their end (advantage
    +1 at every step, with values 0), trials 2-3 see observations in [0.5, 1), act 2 and earn nothing (advantage 0);
    after the minibatch's normalization, the first two have positive advantages, the last two negative."""
    g = torch.Generator().manual_seed(0)
    observations = torch.rand(4, 8, 4, generator=g) / 2
    observations[2:] += 0.5
    buf = {
        "observations": observations,
        "prev_actions": torch.zeros(4, 8, dtype=torch.long),
        "prev_rewards": torch.zeros(4, 8),
        "prev_dones": torch.zeros(4, 8),
        "prev_arrivals": torch.zeros(4, 8, 2),
        "actions": torch.tensor([1, 1, 2, 2])[:, None].repeat(1, 8),
        "values": torch.zeros(4, 8),
        "rewards": torch.zeros(4, 8),
        "active": torch.ones(4, 8, dtype=torch.bool),
    }
    buf["prev_dones"][:, 0] = 1
    buf["rewards"][:2, -1] = 1
    buf["logprobs"] = chosen_logprobs(model, buf)  # the policy that acted is the model as it is
    return buf


def chosen_logprobs(model, buf):
    """(N, L) the model's log-probability of each trial's chosen actions."""
    with torch.no_grad():
        logits, _ = model(**{key: buf[key] for key in R.TOKEN_KEYS})
    return torch.log_softmax(logits, -1).gather(-1, buf["actions"][..., None])[..., 0]


def ppo_model():
    torch.manual_seed(0)
    return R.ActorCritic(config(context=8, n_layer=1))


def update(model, buf, args, optimizer=None):
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=1e-2, eps=1e-5)
    return R.ppo_update(model, optimizer, buf, args, torch.Generator().manual_seed(0), torch.device("cpu"))


def weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_ppo_update_moves_the_policy_towards_actions_with_positive_advantage():
    model = ppo_model()
    buf = ppo_batch(model)
    before = buf["logprobs"]
    stats = update(model, buf, ppo_args())
    after = chosen_logprobs(model, buf)
    assert (after[:2] > before[:2]).all()  # positive advantage: the chosen action became more likely
    assert (after[2:] < before[2:]).all()  # negative advantage: less likely
    assert set(stats) == {"policy_loss", "value_loss", "entropy", "approx_kl"}
    assert stats["approx_kl"] == pytest.approx(0.0, abs=1e-6)  # measured before the step: the policy that acted


def test_ppo_update_stops_pushing_beyond_the_clip_range():
    """Once each chosen action's probability is past 1 ± clip_coef of the acting policy's, in the direction of its
    advantage, the clipped objective has no gradient: no weight moves (an unclipped objective would push on)."""
    model = ppo_model()
    buf = ppo_batch(model)
    buf["logprobs"][:2] -= 1.0  # ratio e > 1.2 where the advantage is positive
    buf["logprobs"][2:] += 1.0  # ratio 1/e < 0.8 where it is negative
    before = weights(model)
    update(model, buf, ppo_args(clip_coef=0.2))
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    update(model, buf, ppo_args(clip_coef=2.0))  # a ratio of e lies inside 1 ± 2: pushed further
    assert not torch.equal(model.policy.bias, before["policy.bias"])


def test_ppo_update_fits_the_value_to_the_returns():
    model = ppo_model()
    buf = ppo_batch(model)
    _, returns = R.gae(buf, gamma=1.0, lam=1.0)  # 1 in trials 0-1, 0 in trials 2-3

    def value_error():
        with torch.no_grad():
            _, values = model(**{key: buf[key] for key in R.TOKEN_KEYS})
        return float(((values - returns) ** 2).mean())

    before = value_error()
    update(model, buf, ppo_args(vf_coef=0.5, update_epochs=30))
    assert value_error() < 0.2 * before


def test_ppo_update_clips_the_gradient_norm():
    """With plain SGD at lr 1 the step is minus the gradient: its norm is the clipped gradient's norm."""
    steps = {}
    for max_grad_norm in (1e-3, 1e6):
        model = ppo_model()
        buf = ppo_batch(model)
        before = weights(model)
        update(model, buf, ppo_args(vf_coef=1.0, max_grad_norm=max_grad_norm), torch.optim.SGD(model.parameters(), 1))
        steps[max_grad_norm] = float(
            torch.cat([(p.detach() - before[n]).flatten() for n, p in model.named_parameters()]).norm()
        )
    assert steps[1e-3] == pytest.approx(1e-3, rel=1e-3)  # clipped to the bound
    assert steps[1e6] > 1e-2  # the gradient itself is far larger


def test_ppo_update_entropy_bonus_raises_the_entropy():
    model = ppo_model()
    with torch.no_grad():
        model.policy.bias.copy_(torch.tensor([3.0, 0.0, 0.0, 0.0, 0.0]))  # a peaked policy
    buf = ppo_batch(model)
    buf["rewards"].zero_()  # no advantage anywhere: only the entropy term pulls

    def entropy():
        with torch.no_grad():
            logits, _ = model(**{key: buf[key] for key in R.TOKEN_KEYS})
        return float(torch.distributions.Categorical(logits=logits).entropy().mean())

    before = weights(model)
    update(model, buf, ppo_args(ent_coef=0.0, update_epochs=3))
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())  # nothing to learn
    first = entropy()
    update(model, buf, ppo_args(ent_coef=0.5, update_epochs=3))
    assert entropy() > first + 0.05


def test_ppo_update_ignores_the_steps_after_a_trial_ended():
    runs = []
    for garbage in (False, True):
        model = ppo_model()
        buf = ppo_batch(model)
        buf["active"][3, 5:] = False  # trial 3 ended at step 5: its last 3 steps are padding
        if garbage:
            buf["observations"][3, 5:] = 9.0
            buf["actions"][3, 5:] = 4
            buf["rewards"][3, 5:] = 5.0
            buf["values"][3, 5:] = -3.0
            buf["logprobs"][3, 5:] = -7.0
        update(model, buf, ppo_args(vf_coef=0.5, ent_coef=0.01, update_epochs=2))
        runs.append(weights(model))
    assert all(torch.equal(runs[0][name], runs[1][name]) for name in runs[0])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--iterations", "0"], "--iterations must be >= 1"),
        (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
        (["--size", "5", "--eval-envs", "60"], "holds 20 tasks"),
        ([], "not a readable checkpoint"),
    ],
)
def test_cli_error_is_one_line(tmp_path, monkeypatch, capsys, flags, message):
    """K.run_cli in this process (a subprocess costs seconds of imports; the slow test below runs one)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "checkpoints").mkdir(parents=True)
    (tmp_path / "data" / "checkpoints" / "rl2__9x9__1.pt").write_bytes(b"garbage")
    monkeypatch.setattr(sys, "argv", ["rl2_train.py", *flags])
    with pytest.raises(SystemExit) as exited:
        K.run_cli(R.main, R.Args)
    stderr = capsys.readouterr().err
    assert exited.value.code == 2 and stderr.strip().count("\n") == 0 and message in stderr


@pytest.mark.slow
def test_cli_error_is_one_line_in_a_subprocess(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "rl2_train.py"), "--size", "100"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "--size: grid size 100 is larger than 32" in result.stderr
    assert os.listdir(tmp_path) == []
