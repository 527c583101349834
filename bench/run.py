#!/usr/bin/env python3
"""The macro benchmark: `python bench/run.py --help`, or `make bench` / `make bench-quick`."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
