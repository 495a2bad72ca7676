"""benchmarks/gpu_check.py --smoke: every stage of the one-GPU check, tiny, on the CPU."""

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_smoke_runs_every_stage_and_writes_its_report(tmp_path):
    out = tmp_path / "check"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py"), "--smoke", "--out", str(out)],
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
    assert summary["speeds"]["sac"]["agent_steps_per_s"] > 0 and summary["speeds"]["eval"]["tasks"] == 6
    assert all(row["iterations_per_s"] > 0 and 0 < row["mfu"] for row in summary["speeds"]["train"]["rows"])
    assert [r["context"] for r in summary["results"]] == [40, 20, 10]
    for r in summary["results"]:  # each model was evaluated on 6 test tasks
        with np.load(r["eval_file"], allow_pickle=False) as data:
            assert json.loads(str(data["meta"]))["split"] == "test" and data["tasks"].shape == (6, 4)
    assert len(os.listdir(out / "data" / "nx1-light")) == 16
    for name in ("report.md", "fig2_sac.png", "fig3_ad_dark.png", "fig4_context.png", "fig4_context.csv"):
        assert (out / name).exists(), name
    report = (out / "report.md").read_text()
    assert "AD training" in report and "evaluation, 6 tasks" in report and "| 40 |" in report
    assert any((out / "runs").iterdir())  # TensorBoard runs land in the output folder


def test_a_used_output_folder_is_refused(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.md").write_text("an earlier check")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py"), "--smoke", "--out", str(tmp_path / "old")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "is not empty" in result.stderr and result.stderr.strip().count("\n") == 0


def test_without_a_gpu_it_says_so_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES=""),
    )
    assert result.returncode == 2 and "no CUDA device" in result.stderr and result.stderr.strip().count("\n") == 0
