"""benchmarks/gpu_check.sh in its quick CPU form: every section runs and the one
JSON holds what the GPU run will report; the evaluation's Recall@1 is the
brute-force one of the same embeddings."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def run(*args):
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip


@pytest.mark.slow
def test_quick_cpu_check_writes_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = run("--device", "cpu", "--quick", "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert list(sections) == ["training_step", "regularizer", "evaluation",
                              "input_pipeline"]  # fmt: skip
    for name, section in sections.items():
        assert "error" not in section, (name, section.get("error"))
        assert math.isfinite(section["value"])
        # an overhead may come out below zero from noise on a CPU; the rest are
        # times, ratios and rates
        assert section["value"] >= 0 or name == "training_step", (name, section)
        assert section["peak_gpu_bytes"] is None  # CPU
        assert section["section_seconds"] > 0
    assert report["meta"]["quick"] is True and report["meta"]["device"] == "cpu"
    step = sections["training_step"]
    assert step["target"] == 0.05 and step["met"] == (step["value"] <= 0.05)
    assert step["precision"] == "float32" and step["pipeline_s"] > 0
    regularizer = sections["regularizer"]
    assert [(r["classes"], r["dims"]) for r in regularizer["rows"]] == [(300, 16)]
    assert regularizer["value"] == max(r["ours_s"] / r["floor_s"]
                                       for r in regularizer["rows"])  # fmt: skip
    pipeline = sections["input_pipeline"]
    assert {r["source"] for r in pipeline["rows"]} == {"cold", "memory"}
    for row in pipeline["rows"]:
        expected = row["images_per_s"] / pipeline["trunk"]["images_per_s"]
        assert row["ratio_to_trunk"] == pytest.approx(expected)
    assert pipeline["met"] == (pipeline["value"] >= 1.2)
    assert "| input_pipeline |" in done.stdout

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from bench_evaluation import make_embeddings
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    evaluation = sections["evaluation"]
    x, labels = make_embeddings(2000, 400, 16, noise=2.0)
    similarity = x.astype(np.float64) @ x.astype(np.float64).T
    np.fill_diagonal(similarity, -np.inf)
    recall_at_1 = np.mean(labels[similarity.argmax(1)] == labels)
    assert evaluation["metrics"]["recall_at_1"] == pytest.approx(recall_at_1, abs=1e-12)


def test_missing_wheels_are_one_sentence(tmp_path):
    done = run("--wheels", str(tmp_path), "--device", "cpu", "--quick")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"gpu_check.sh: no wheels in {tmp_path}; run 'bash benchmarks/gpu_check.sh "
        "--download' where PyPI is reachable"
    )


def test_cuda_without_cuda_is_one_sentence(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    done = run("--device", "cuda", "--output", str(tmp_path / "x.json"))
    assert done.returncode == 1
    assert done.stderr.strip().endswith("pass --device cpu --quick to try the script")
