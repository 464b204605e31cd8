"""benchmarks/bench_input.py, tiny: synthetic JPEGs that decode as written, and a
JSON whose ratios are its own rates divided by the trunk's."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def test_synthetic_images_are_photographs_of_the_asked_size(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from bench_input import write_synthetic
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    write_synthetic(str(tmp_path), 6, (50, 40), classes=3)
    files = sorted(tmp_path.glob("*/*.jpg"))
    assert [f.parent.name for f in files] == ["class000"] * 2 + ["class001"] * 2 + [
        "class002"] * 2  # fmt: skip
    for f in files:
        with Image.open(f) as im:
            assert im.format == "JPEG" and im.size == (50, 40)
            pixels = np.asarray(im.convert("RGB"), dtype=np.float64)
        assert 5 < pixels.std() < 120  # neither flat nor pure noise


@pytest.mark.slow
def test_tiny_run_reports_ratios_to_the_trunk(tmp_path):
    out = tmp_path / "input.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/bench_input.py", "--synthetic", "24",
         "--synthetic-classes", "4", "--synthetic-size", "80", "60", "--batch-size",
         "8", "--samples-per-class", "2", "--workers", "0,1", "--cache-modes",
         "memory,mmap", "--batches", "1", "--model", "deit_tiny_patch16_224",
         "--trunk-batch", "2", "--trunk-repeats", "1", "--output", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [(r["source"], r["workers"]) for r in report["rows"]] == [
        ("cold", 0), ("memory", 0), ("mmap", 0), ("cold", 1), ("memory", 1),
        ("mmap", 1)]  # fmt: skip
    trunk = report["trunk"]["images_per_s"]
    for row in report["rows"]:
        assert row["ratio_to_trunk"] == pytest.approx(row["images_per_s"] / trunk)
        assert row["met"] == (row["ratio_to_trunk"] >= 1.2)
    # 80x60 images are below --cache-size: stored as decoded, 3 bytes a pixel
    assert report["cache_builds"]["memory"]["bytes"] == 24 * 80 * 60 * 3
    assert "| source | workers |" in done.stdout
