"""`sweep` + `compare` end to end on a 2 x 2 x 2 grid of tiny digits runs: N local
processes (interrupted halfway, then resumed), and submitit's local executor."""

import glob
import json
import math
import os
import re
import signal
import statistics
import threading
import time

import pytest

from pml_soproxy import cli
from pml_soproxy.sweeps.plan import read_plan
from pml_soproxy.sweeps.runner import run_states
from pml_soproxy.sweeps.worker import LOG

from .helpers import FLAGS, GRID_FLAGS, THIRD_KEY

pytestmark = pytest.mark.slow


def results_of(sweep):
    out = {}
    for run in read_plan(sweep)["runs"]:
        with open(os.path.join(sweep, run["folder"], "results.json")) as f:
            out[run["name"]] = (run["values"], json.load(f))
    return out


def check_pairs_and_comparison(sweep):
    """Same seed = same initial proxies across so_weight; compare.json's numbers
    recomputed from the results.json files."""
    results = results_of(sweep)
    assert len(results) == 8
    cells = {}
    for values, r in results.values():
        key = (values[THIRD_KEY], values["seed"])
        cells.setdefault(key, {})[values["so_weight"]] = r
    for (third, seed), pair in cells.items():
        assert pair[0.0]["proxy_cosines_init"] == pair[1.0]["proxy_cosines_init"]
        assert pair[0.0]["config"]["seed"] == pair[1.0]["config"]["seed"] == seed
        other = cells[(third, 1 - seed)][0.0]["proxy_cosines_init"]
        assert other != pair[0.0]["proxy_cosines_init"]  # the seed matters
    assert cli.main(["compare", sweep]) == 0
    with open(os.path.join(sweep, "compare.json")) as f:
        comparison = json.load(f)
    assert os.path.getsize(os.path.join(sweep, "compare.png")) > 0
    groups = {g["values"][THIRD_KEY]: g for g in comparison["groups"]}
    for third, group in groups.items():
        for metric in ("recall_at_1", "mean_average_precision_at_r"):
            after = [cells[(third, s)][1.0]["test"][metric] for s in (0, 1)]
            before = [cells[(third, s)][0.0]["test"][metric] for s in (0, 1)]
            got = group["stats"]["1"][f"test/{metric}"]
            assert got["mean"] == pytest.approx(statistics.mean(after), abs=1e-12)
            assert got["std"] == pytest.approx(statistics.stdev(after), abs=1e-12)
            d = [a - b for a, b in zip(after, before)]
            paired = group["paired"]["1"][f"test/{metric}"]
            assert paired["mean"] == pytest.approx(statistics.mean(d), abs=1e-12)
            if statistics.stdev(d) > 1e-9:
                t = statistics.mean(d) / (statistics.stdev(d) / math.sqrt(2))
                assert paired["t"] == pytest.approx(t, rel=1e-6)
        # validation selects the so_weight with the higher mean validation metric
        val = {
            w: statistics.mean(
                next(h for h in cells[(third, s)][w]["history"]
                     if h["epoch"] == cells[(third, s)][w]["best_epoch"])[
                    "precision_at_1"]
                for s in (0, 1))
            for w in (0.0, 1.0)
        }  # fmt: skip
        assert group["selected"] == max(val, key=lambda w: (val[w], -w))
    return comparison


def interrupt_when(condition, timeout=600):
    """SIGINT to this process (Ctrl-C) once ``condition()`` holds."""

    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_local_processes_interrupted_halfway_resume_only_unfinished_runs(
    tmp_path, capsys
):
    sweep = str(tmp_path / "sweep")
    runs = os.path.join(sweep, "runs")

    def halfway():  # a run finished, another has a checkpoint and no results yet
        folders = glob.glob(os.path.join(glob.escape(runs), "*"))
        done = [f for f in folders if os.path.isfile(os.path.join(f, "results.json"))]
        going = [f for f in folders if f not in done and
                 os.path.isfile(os.path.join(f, "checkpoint_latest.pt"))]  # fmt: skip
        return bool(done and going)

    args = ["sweep", sweep, "--dataset", "digits", *GRID_FLAGS, *FLAGS,
            "--processes", "2"]  # fmt: skip
    watcher = interrupt_when(halfway)
    assert cli.main(args) == 130
    watcher.join()
    printed = capsys.readouterr().out
    assert (
        "Interrupted: " in printed and f"`pml-soproxy sweep {sweep}` resumes" in printed
    )
    states = run_states(sweep, read_plan(sweep))
    finished = sorted(n for n, s in states.items() if s == "finished")
    unfinished = sorted(n for n, s in states.items() if s == "unfinished")
    assert finished and unfinished and len(finished) < 8
    stamps = {
        n: os.stat(os.path.join(runs, n, "results.json")).st_mtime_ns for n in finished
    }
    assert not glob.glob(os.path.join(glob.escape(runs), "*", "*.tmp-*"))

    # the same command (or the folder alone) resumes: only the unfinished runs train
    assert cli.main(["sweep", sweep, "--processes", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"{len(finished)} finished, {len(unfinished)} to resume" in printed
    for name in finished:
        assert f"finished: {name}:" not in printed
        after = os.stat(os.path.join(runs, name, "results.json")).st_mtime_ns
        assert after == stamps[name]
    for name in states:
        if name not in finished:
            assert f"finished: {name}:" in printed
    for name in unfinished:
        log = open(os.path.join(runs, name, LOG)).read()
        assert log.count("== pml-soproxy sweep") == 2
        assert f"run {name}, resumed" in log
        # the checkpoint may be of epoch 1 or of the last epoch (interrupted testing)
        assert re.search(r"resuming .* after epoch [12]\b", log), log
    assert set(run_states(sweep, read_plan(sweep)).values()) == {"finished"}

    comparison = check_pairs_and_comparison(sweep)
    assert comparison["missing_runs"] == []
    assert cli.main(["sweep", sweep]) == 0  # finished: nothing trains
    assert "nothing left to run" in capsys.readouterr().out


def test_submitit_local_executor(tmp_path, capsys):
    sweep = str(tmp_path / "sweep")
    args = ["sweep", sweep, "--dataset", "digits", *GRID_FLAGS, *FLAGS,
            "--executor", "local", "--runs-per-job", "4", "--timeout-min", "20"]  # fmt: skip
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "submitted 2 local job(s)" in printed
    assert printed.count("finished: so_weight=") == 8
    assert glob.glob(os.path.join(glob.escape(sweep), "submitit", "*", "*_log.out"))
    check_pairs_and_comparison(sweep)
    assert cli.main(args) == 0  # all finished: no job is submitted
    printed = capsys.readouterr().out
    assert "nothing left to run" in printed and "submitted" not in printed
