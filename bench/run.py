#!/usr/bin/env python
"""Run the metakern microbenchmarks from a checkout: ``python bench/run.py --quick``.

The same as ``metakern bench`` or ``python -m metakern.benchmark``, except that the
results go to this checkout's ``bench/results/`` (wherever it is run from) unless
``--out``/``--csv`` say otherwise; every flag is documented by ``--help`` and in
``metakern/benchmark/``.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # works without pip install

from metakern.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(default_out=os.path.join(ROOT, "bench", "results")))
