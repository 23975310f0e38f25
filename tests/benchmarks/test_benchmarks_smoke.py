"""The pretraining throughput, evaluation and fault benchmarks run end to end with the smallest settings."""

from __future__ import annotations

import re

import pytest

from tests.helpers.benchmarks import run_benchmark
from tests.helpers.project import PROJECT_ROOT

pytestmark = pytest.mark.slow  # every test here starts processes or real kedro runs

ENGINE_ROW = re.compile(r"^engine: (aavae|aavae-compiled|paper) images_per_s: \d+\.\d step_ms: \d+\.\d\b")




def test_pretrain_throughput_reports_both_engines_and_ends_with_the_ratio():
    # One thread: on a shared two-core machine, two contending OpenMP threads are far slower.
    result = run_benchmark(
        "--device",
        "cpu",
        "--data",
        "random",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--rounds",
        "1",
        "--batch-size",
        "8",
        "--width",
        "8",
        "--images",
        "64",
        "--workers",
        "1",
        "--threads",
        "1",
        "--engines",
        "aavae,paper",  # the compiled engine is checked in tests/training/test_training.py (compiling takes a minute)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("device: ") and "precision aavae: " in lines[0]
    assert "random uint8" in lines[1]
    rows = [line for line in lines if line.startswith("engine: ")]
    assert [ENGINE_ROW.match(row).group(1) for row in rows] == ["aavae", "paper"], rows
    assert re.fullmatch(r"ratio: \d+\.\d\d", lines[-1]), lines[-1]


def test_pretrain_throughput_refuses_a_batch_larger_than_the_images():
    result = run_benchmark("--device", "cpu", "--images", "4", "--batch-size", "8")
    assert result.returncode != 0
    assert "--images (4) must hold at least one batch" in result.stderr


def test_evaluate_benchmark_times_fp32_and_auto_features_and_their_difference():
    result = run_benchmark("--device", "cpu", "--images", "64", "--width", "8", "--train", "300",
                           "--test", "100", "--dim", "16", "--threads", "1",
                           script=PROJECT_ROOT / "benchmarks" / "evaluate.py")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert any(line.startswith("features (32-true): 64 images x ") for line in lines), lines
    summary = next(line for line in lines if line.startswith("features: 64 images at evaluate.precision=auto"))
    assert re.search(r"\d+\.\d\dx fp32$", summary), summary
    difference = next(line for line in lines if line.startswith("features: relative difference from fp32 "))
    assert re.search(r" \d+\.\d\d%$", difference), difference
    assert re.fullmatch(r"seconds: \d+\.\d", lines[-1]), lines[-1]


@pytest.mark.slow
def test_faults_reports_kill_and_input_trials_in_one_table(tmp_path):
    """One kill of pretraining, one parameter refused before any node, one hostile request to the
    served model: one row each, the verdict last."""
    result = run_benchmark("--trials", "1", "--no-evaluate", "--epochs", "1", "--only",
                           "pretrain.seed=-5,unknown params", "--workdir", str(tmp_path),
                           script=PROJECT_ROOT / "benchmarks" / "faults.py", timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "| trial | kind | expected | what happened | survived |"
    rows = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[2:-1]]
    assert [(row[0], row[1], row[-1]) for row in rows] == [
        ("kill 1", "kill", "yes"), ("pretrain.seed=-5", "input", "yes"),
        ("server: unknown params key", "input", "yes")], lines
    assert rows[1][3].startswith("exit 1: Error: Invalid parameters: - 'pretrain.seed'"), rows[1]
    assert rows[2][3].startswith("400: params has 'retrun_mu'"), rows[2]
    assert lines[-1] == "trials: 3 survived: 3 lost: 0 left_running: 0"
