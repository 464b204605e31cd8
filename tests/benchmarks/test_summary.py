"""The README's benchmark summary is what benchmarks/summary.py renders from the JSON
results, and its verdicts follow the figures."""

import copy
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location(
    "summary", ROOT / "benchmarks" / "summary.py"
)
summary = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(summary)


def test_readme_summary_is_rendered_from_the_results():
    assert summary.main(["--check"]) == 0


def test_check_fails_on_a_figure_typed_by_hand(tmp_path):
    readme = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text()
    readme.write_text(text.replace("0.56x the exact", "0.50x the exact", 1))
    assert summary.main(["--check", "--readme", str(readme)]) == 1
    assert summary.main(["--write", "--readme", str(readme)]) == 0
    assert readme.read_text() == text


def test_verdicts_follow_the_figures(tmp_path):
    for name in ("evaluation", "regularizer"):
        (tmp_path / f"{name}.json").write_text(
            (ROOT / "benchmarks" / "results" / f"{name}.json").read_text()
        )
    before = summary.render(tmp_path)
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    slow = copy.deepcopy(evaluation)
    slow["checks"]["time_vs_search"]["met"] = False
    (tmp_path / "evaluation.json").write_text(json.dumps(slow))
    after = summary.render(tmp_path)
    row = next(line for line in after.splitlines() if "SOP scale" in line)
    assert "**missed**" in row and after != before
    regularizer = json.loads((tmp_path / "regularizer.json").read_text())
    for row in regularizer["rows"]:
        row["naive"]["peak_bytes"] = row["ours"]["peak_bytes"] * 100
    (tmp_path / "regularizer.json").write_text(json.dumps(regularizer))
    rows = [r for r in summary.render(tmp_path).splitlines() if "SO regulariser" in r]
    assert rows and all(r.split(" | ")[2] == "met" for r in rows)
