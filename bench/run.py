#!/usr/bin/env python
"""Run the metakern microbenchmarks from a checkout: ``python bench/run.py --quick``.

The same as ``metakern bench`` or ``python -m metakern.benchmark``; every flag is
documented by ``--help`` and in ``metakern/benchmark/``.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # works without pip install

from metakern.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
