"""Microbenchmarks: metakern's fused backends against what a user would otherwise run.

Run it as ``metakern bench``, ``python -m metakern.benchmark`` or ``python bench/run.py``::

    python -m metakern.benchmark --quick                    # < 2 minutes on a 2-core CPU
    python -m metakern.benchmark --profile gpu --plot       # on a CUDA machine
    python -m metakern.benchmark --providers vmap,mk --backend cpp --T 25,1024 --K 5

The rows go to ``~/metakern-bench/bench.csv`` (``--out DIR`` for another folder; the
run prints the path); ``bench/run.py`` writes to the checkout's ``bench/results/``.

One module per concern, each importing only modules listed after it:

* :mod:`.cli`: the flags, the run (the table to stdout, the rows to the CSV), :func:`main`;
* :mod:`.scaling`: tasks per second across processes (DDP) and the all-reduce time per step;
  its own command, ``python -m metakern.benchmark.scaling``;
* :mod:`.plots`: the speedup over vmap (bars), memory against ``K``, time against ``T``;
* :mod:`.results`: the run's environment, the CSV (:data:`COLUMNS`), the table;
* :mod:`.measure`: every provider on one (config, quantity): build, first call,
  ``grad_err``, peak memory, timing;
* :mod:`.timing`: the timers (CPU: interleaved rounds of bursts; CUDA: ``do_bench`` or
  events), CUDA graphs, peak memory, the matmul peak, the CPU thread count;
* :mod:`.providers`: what is compared (metakern's backends, ``vmap``, ``loop``, ``higher``);
* :mod:`.workloads`: workloads, configs, profiles, their data, models and FLOP counts.
"""
from .cli import main
from .measure import QUANTITIES
from .plots import NO_MPL, have_matplotlib, plot_rows, run_title
from .providers import Provider, providers
from .results import COLUMNS
from .timing import cpu_peak_mb
from .workloads import BASELINE, PROFILES, WORKLOADS, Config, Profile, Workload, make_profile, meta_flops

__all__ = ["main", "BASELINE", "COLUMNS", "NO_MPL", "PROFILES", "QUANTITIES", "WORKLOADS", "Config", "Profile",
           "Provider", "Workload", "cpu_peak_mb", "have_matplotlib", "make_profile", "meta_flops", "plot_rows",
           "providers", "run_title"]
