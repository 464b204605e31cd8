"""``python -m pml_soproxy.benchmarker``: see :mod:`pml_soproxy.benchmarker.runner`."""

import sys

from .runner import PROG, main

if __name__ == "__main__":
    try:
        main()
    except (RuntimeError, OSError, ValueError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0)
