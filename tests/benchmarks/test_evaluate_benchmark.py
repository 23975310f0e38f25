"""benchmarks/evaluate.py --raw-pixels times the raw-pixel baseline on a real image folder,
with the earlier plain probe beside the preconditioned one (the before/after of issue #24)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from tests.helpers.benchmarks import run_benchmark
from tests.helpers.project import PROJECT_ROOT

pytestmark = pytest.mark.slow  # every test here starts processes or real kedro runs


def test_the_raw_pixel_baseline_is_timed_with_both_probes_on_an_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("test", 8)):
        for label, name in enumerate(("dark", "light")):
            folder = tmp_path / "tree" / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 128, (8, 8, 3)) + 100 * label  # the classes differ in brightness
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{index:03d}.png")

    result = run_benchmark("--device", "cpu", "--raw-pixels", str(tmp_path / "tree"), "--plain",
                           "--threads", "1", script=PROJECT_ROOT / "benchmarks" / "evaluate.py")

    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert any(line.startswith("data (raw pixels): train (48, 192), test (16, 192)") for line in lines), lines
    probes = [re.match(r"linear probe \((\w+) L-BFGS\): top1 (\d\.\d+) ", line) for line in lines]
    scores = {match.group(1): float(match.group(2)) for match in probes if match}
    assert scores == {"preconditioned": 1.0, "plain": 1.0}, lines
    assert any(line.startswith("knn (k=48, ") for line in lines), lines
    assert re.fullmatch(r"seconds: \d+\.\d", lines[-1]), lines[-1]
