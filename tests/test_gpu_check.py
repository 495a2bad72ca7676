"""benchmarks/gpu_check.py: --smoke runs every stage of the one-GPU check, tiny, on the CPU (torch.compile included);
the report states only what was measured; a used folder and a missing GPU are refused in one line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import load_benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.py")


@pytest.fixture(scope="module")
def G():
    """benchmarks/gpu_check.py as a module."""
    return load_benchmark("gpu_check")


@pytest.mark.slow
def test_smoke_runs_every_stage_and_writes_its_report(tmp_path):
    out = tmp_path / "check"
    result = subprocess.run(
        [sys.executable, SCRIPT, "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["stages"]) == {
        "collect",
        "training_speed",
        "train_ctx40",
        "train_ctx20",
        "train_ctx10",
        "eval_ctx40",
        "eval_ctx20",
        "eval_ctx10",
        "total",
    }
    speeds = summary["speeds"]
    assert speeds["sac"]["agent_steps_per_s"] > 0 and speeds["sac"]["goal_agent_steps_per_s"] is None
    # training speed: measured on the pipeline's tokens, eager and compiled (inductor on the CPU)
    train = speeds["train"]
    assert train["arrival_token"] is True and train["compile_error"] is None
    assert [(row["batch"], row["compile"]) for row in train["rows"]] == [(8, False), (8, True)]
    assert all(row["iterations_per_s"] > 0 and 0 < row["mfu"] for row in train["rows"])
    # ad_train.py's --compile path ran: the longest context trained compiled, the others eagerly
    assert [speeds["ad_train"][c]["compile"] for c in ("40", "20", "10")] == [True, False, False]
    for context in ("40", "20", "10"):
        checkpoint = torch.load(speeds["ad_train"][context]["checkpoint"], weights_only=True)
        assert checkpoint["args"]["arrival_token"] is True and checkpoint["iteration"] == 8
    # the evaluation is timed on what it ran: 6 test tasks x 1,000 steps, no goal at the smoke scale
    assert speeds["eval"] == {
        "seconds": summary["stages"]["eval_ctx40"],
        "tasks": 6,
        "steps": 1000,
        "context": 40,
        "goal_s": None,
    }
    assert [r["context"] for r in summary["results"]] == [40, 20, 10]
    for r in summary["results"]:  # each model was evaluated on 6 test tasks
        with np.load(r["eval_file"], allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            assert (meta["split"], meta["steps"]) == ("test", 1000) and data["tasks"].shape == (6, 4)
    assert len(os.listdir(out / "data" / "nx1-light")) == 8
    for name in ("report.md", "fig2_sac.png", "fig3_ad_dark.png", "fig4_context.png", "fig4_context.csv"):
        assert (out / name).exists(), name
    report = (out / "report.md").read_text()
    assert "AD training, batch 8, context 40, with the arrival token" in report
    assert "evaluation (`ad_eval.py`), 6 test tasks x 1,000 steps" in report and "| 40 |" in report
    assert "meets the goal" not in report and "misses the goal" not in report  # the smoke scale has no goals
    assert "scaled" not in report and "projected" not in report  # nothing it did not measure
    assert any((out / "runs").iterdir())  # TensorBoard runs land in the output folder


@pytest.mark.slow
def test_a_failing_compiler_leaves_the_check_eager(G, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = G.Args(smoke=True)
    data = str(tmp_path / "data")
    G.collect(args, G.SMOKE, str(tmp_path), data)

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", no_compiler)
    speed = G.measure_training(args, G.SMOKE, data, torch.device("cpu"))
    assert speed["compile_error"] == "RuntimeError: no C++ compiler" and speed["compiled"] is False
    assert [row["compile"] for row in speed["rows"]] == [False] and speed["best"]["compile"] is False


def gpu_speeds(G, eval_seconds: float) -> tuple[dict, dict, list[dict]]:
    """What a GPU run measures, made up, in the shape `main` hands to `write_report`."""
    row = {"batch": 64, "compile": True, "iterations_per_s": 300.0, "model_flops_per_s": 1e14, "mfu": 0.3}
    speeds = {
        "sac": {
            "seconds": 100.0,
            "runs": 800,
            "steps": 8000,
            "agent_steps_per_s": 64_000.0,
            "goal_agent_steps_per_s": G.SAC_GOAL_AGENT_STEPS_PER_S,
        },
        "train": {
            "rows": [row],
            "peak_flops": 3e14,
            "arrival_token": True,
            "context": 500,
            "best": row,
            "eager": row,
            "compiled": True,
            "compile_error": None,
            "goal_iterations_per_s": 250,
        },
        "ad_train": {500: {"iterations": 1000, "compile": True, "iterations_per_s": 280.0}},
        "eval": {"seconds": eval_seconds, "tasks": 612, "steps": 17_500, "context": 500, "goal_s": 60},
    }
    stages = {"collect": 100.0, "eval_ctx500": eval_seconds, "total": 500.0}
    metrics = {}
    for metric in ("first500", "last500", "rise", "last5"):
        metrics.update({metric: 1.0, f"{metric}_low": 0.9, f"{metric}_high": 1.1})
    results = [{"context": 500, "tasks": 612, "reached": 300, "envs": 612, **metrics}]
    return speeds, stages, results


def test_the_report_judges_each_measured_number_against_its_goal(G, tmp_path):
    for eval_seconds, verdict in ((45.0, "meets the goal"), (75.0, "misses the goal")):
        speeds, stages, results = gpu_speeds(G, eval_seconds)
        report = G.write_report(G.Args(), G.Scale(), torch.device("cpu"), speeds, stages, results, str(tmp_path))
        lines = report.splitlines()
        sac = next(line for line in lines if line.startswith("| SAC collection"))
        assert "800 runs x 8,000 steps | 64,000 agent-steps/s (100 s) | 333,333 agent-steps/s" in sac
        assert sac.endswith("misses the goal |")  # the measured rate, against the rate of the goal
        evaluation = next(line for line in lines if line.startswith("| evaluation"))
        # the goal is for the 612 test tasks it ran, in seconds as measured: no scaling to other task counts
        assert f"612 test tasks x 17,500 steps in one batch, context 500 | {eval_seconds:.1f} s | 60 s" in evaluation
        assert evaluation.endswith(f"{verdict} |")
        assert "632" not in report and "scaled" not in report and "projected" not in report
        assert "| AD training, batch 64, context 500, with the arrival token, compiled | 300 iterations/s" in report
        assert (tmp_path / "report.md").read_text() == report
        assert json.loads((tmp_path / "summary.json").read_text())["speeds"]["eval"]["seconds"] == eval_seconds


def test_a_used_output_folder_is_refused(G, tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.md").write_text("an earlier check")
    with pytest.raises(ValueError, match="is not empty"):
        G.main(G.Args(smoke=True, out=str(tmp_path / "old")))
    assert os.listdir(tmp_path / "old") == ["report.md"]


def test_without_a_gpu_it_says_so(G, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device"):
        G.main(G.Args(out=str(tmp_path / "check")))
    assert not (tmp_path / "check").exists()


@pytest.mark.slow
def test_without_a_gpu_the_command_says_so_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, SCRIPT, "--out", str(tmp_path / "check")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES=""),
    )
    assert result.returncode == 2 and "no CUDA device" in result.stderr and result.stderr.strip().count("\n") == 0
