"""python -m pml_soproxy.upstream PML_SOURCE_DIR [--no-test]"""

import argparse
import sys
from pathlib import Path

from . import (
    CONTRIBUTIONS,
    DEFAULT_DEVICE,
    DEFAULT_DTYPES,
    UpstreamError,
    format_and_lint,
    missing_pml_path,
    missing_template_path,
    prepare,
    run_tests,
)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m pml_soproxy.upstream",
        description=(
            "Write SoftOrthogonalityRegularizer and SoftOrthogonalProxyAnchorLoss, "
            "their exports, tests and docs into a pytorch-metric-learning source "
            "checkout, format and lint them with PML's settings, and run the new "
            "tests with PML's unittest runner."
        ),
    )
    parser.add_argument("pml_dir", metavar="PML_SOURCE_DIR", type=Path)
    parser.add_argument(
        "--no-test", action="store_true", help="write the files but skip the tests"
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter for PML's tests (default: this one)",
    )
    parser.add_argument("--device", default=DEFAULT_DEVICE, help="TEST_DEVICE")
    parser.add_argument("--dtypes", default=DEFAULT_DTYPES, help="TEST_DTYPES")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    root = args.pml_dir
    missing = missing_pml_path(root)
    if missing is not None:
        print(
            "error: {} is not a pytorch-metric-learning source tree "
            "(no {}).".format(root, missing),
            file=sys.stderr,
        )
        return 2
    missing_template = missing_template_path()
    if missing_template is not None:
        print(
            "error: {} is missing; run this from a source checkout of pml-soproxy "
            "(pip install -e .).".format(missing_template),
            file=sys.stderr,
        )
        return 2
    try:
        written = prepare(root)
    except UpstreamError as error:
        print("error: {}".format(error), file=sys.stderr)
        return 2
    print("Wrote into {}:".format(root))
    for kind in ("python", "docs", "images"):
        for path in sorted(set(written[kind])):
            print("  {}".format(path.relative_to(root)))
    lint_ok = format_and_lint(root, written["python"])
    if args.no_test:
        return 0 if lint_ok else 1
    try:
        code = run_tests(root, args.python, args.device, args.dtypes)
    except UpstreamError as error:
        print("error: {}".format(error), file=sys.stderr)
        return 2
    if code == 0 and not lint_ok:
        return 1
    if code == 0:
        print(
            "Ready: {} added and tested; commit the files above on a branch off "
            "PML's dev branch and open the pull request (see CONTRIBUTING.md)."
            "".format(" and ".join(c.class_name for c in CONTRIBUTIONS))
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
