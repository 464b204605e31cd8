"""Start-up time of ``pml-soproxy benchmark --help`` (target: about a second).

Each command runs in a fresh interpreter, ``--repeats`` times, the variants
interleaved (the machine's load hits them alike); the table shows the median wall
time and whether torch was imported. ``--source NAME=DIR`` (repeatable) measures the
``pml_soproxy`` package in DIR instead of the installed one (put first on
``PYTHONPATH``), e.g. a copy before and after a change, side by side in one run:

    python benchmarks/bench_cli_startup.py
    python benchmarks/bench_cli_startup.py --source before=/tmp/a --source after=/tmp/b

``--device`` is accepted like every benchmark's, and unused: nothing runs on it.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchutil import meta, table, write_json

#: (label, code run by ``python -c``); each prints json {"torch": imported?}
COMMANDS = {
    "pml-soproxy benchmark --help": (
        "from pml_soproxy import cli\n"
        "try:\n    cli.main(['benchmark', '--help'])\nexcept SystemExit:\n    pass\n"
    ),
    "python -m pml_soproxy.benchmarker --help": (
        "from pml_soproxy.benchmarker import runner\n"
        "try:\n    runner.main(['--help'])\nexcept SystemExit:\n    pass\n"
    ),
    "pml-soproxy --help": (
        "from pml_soproxy import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
    ),
}
PROBE = (
    "\nimport json, sys\nprint(json.dumps({'torch': 'torch' in sys.modules, "
    "'file': __import__('pml_soproxy').__file__}), file=sys.stderr)\n"
)


def one_run(code, source):
    env = dict(os.environ)
    if source:
        env["PYTHONPATH"] = source + os.pathsep + env.get("PYTHONPATH", "")
    start = time.perf_counter()
    # from a neutral folder: `python -c` puts the working folder first on sys.path
    result = subprocess.run([sys.executable, "-c", code + PROBE], env=env,
                            cwd=tempfile.gettempdir(), capture_output=True,
                            text=True)  # fmt: skip
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    probe = json.loads(result.stderr.strip().splitlines()[-1])
    return seconds, probe


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--source", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--output", default="benchmarks/results/cli_startup.json")
    args = parser.parse_args()
    sources = dict(s.split("=", 1) for s in args.source) or {"installed": ""}
    times = {(s, c): [] for s in sources for c in COMMANDS}
    probes = {}
    for _ in range(args.repeats):
        for command, code in COMMANDS.items():
            for name, folder in sources.items():
                seconds, probe = one_run(code, folder)
                times[name, command].append(seconds)
                probes[name, command] = probe
    rows, records = [], []
    for (name, command), values in times.items():
        median = statistics.median(values)
        torch_loaded = probes[name, command]["torch"]
        rows.append([name, command, f"{median:.2f} s", f"{min(values):.2f} s",
                     "yes" if torch_loaded else "no"])  # fmt: skip
        records.append(dict(source=name, command=command, median_s=median,
                            all_s=values, imports_torch=torch_loaded,
                            package=probes[name, command]["file"]))  # fmt: skip
    print(table(["source", "command", "median", "min", "imports torch"], rows))
    write_json(args.output, {"meta": meta(args, repeats=args.repeats),
                             "results": records})  # fmt: skip


if __name__ == "__main__":
    main()
