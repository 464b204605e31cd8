"""benchmarks/bench_ann.py in its tiny form: the JSON it writes is sane and its
exact and exhaustive settings find the brute-force (torch) top-10."""

import json
import subprocess
import sys
from pathlib import Path

import faiss
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_ann.py"


def run(*args):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_tiny_run_recalls(tmp_path):
    out = tmp_path / "ann.json"
    done = run(
        "--quick",
        "--sizes",
        "2000",
        "--queries",
        "50",
        "--nlist",
        "16",
        "--nprobe",
        "1,4,16",
        "--ef-search",
        "16,64",
        "--threads",
        "1",
        "--output",
        str(out),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["meta"]["faiss"] == faiss.__version__
    assert result["meta"]["faiss_threads"] == 1
    (size,) = result["runs"]
    assert size["size"] == 2000 and size["queries"] == 50
    indexes = {e["index"]: e for e in size["indexes"]}
    assert set(indexes) == {"Flat", "IVF16,Flat", "IVF16,SQ8", "HNSW32"}
    for entry in indexes.values():
        assert entry["serialized_bytes"] > 0
        for setting in entry["settings"]:
            assert 0.0 <= setting["recall_at_10"] <= 1.0
            assert setting["qps"] > 0
            # the fastest exact call is at least as fast as Flat's median
            assert setting["speedup_vs_fastest_exact"] <= setting["speedup_vs_flat"]
    # exact search agrees with the independent brute force
    (flat,) = indexes["Flat"]["settings"]
    assert flat["recall_at_10"] == 1.0
    assert flat["recall_after"] == 1.0
    assert flat["speedup_vs_flat"] == pytest.approx(1.0)
    # IVF-Flat: more probes never lose a true neighbour; probing every list is exact
    ivf = [s["recall_at_10"] for s in indexes["IVF16,Flat"]["settings"]]
    assert [s["value"] for s in indexes["IVF16,Flat"]["settings"]] == [1, 4, 16]
    assert ivf == sorted(ivf)
    assert ivf[-1] == 1.0
    assert ivf[0] < 1.0  # one list of 16 misses neighbours: the recall is measured
    assert size["target"]["applies"] is False
    # the Markdown summary (README) renders from the JSON alone
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_ann
    finally:
        sys.path.remove(str(SCRIPT.parent))
    text = bench_ann.summary(result)
    assert "| IVF16,Flat" in text and "the target is set at 1,000,000" in text


def test_cuda_without_faiss_gpu_is_one_line():
    if faiss.get_num_gpus() > 0:
        pytest.skip("faiss has GPU support here")
    done = run("--device", "cuda", "--sizes", "100")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "faiss" in lines[0] and "--device cpu" in lines[0]
