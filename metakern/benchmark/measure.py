"""One measurement: every provider on one (config, quantity), as rows of the CSV.

Two quantities are timed per (config, provider):

* ``op``: adaptation and meta-gradient only -- adapt with parameters that require
  grad, query forward and loss, ``torch.autograd.grad`` of it w.r.t. the
  initialisation (metakern: the functional API);
* ``step``: a full meta-iteration -- adapt, query forward, loss, ``backward()`` and
  an Adam step (metakern: through the ``mk.MAML`` learner, as a user writes it).
  Every provider uses the same optimizer, torch's ``Adam(fused=True)``.

FLOP/s are the algorithm's FLOPs (:func:`.workloads.meta_flops`) over the median time,
and ``peak_fraction`` divides them by the device's fp32 matmul rate measured in the
same run (:func:`.timing.measure_peak`). ``grad_err`` is each provider's relative
meta-gradient difference to ``vmap`` on the same inputs (``op`` rows), so a fast but
wrong provider shows.
"""
from __future__ import annotations

import copy
import gc
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .providers import Provider
from .timing import _cuda_graph, _first_line, _sync, cpu_peak_mb, time_fn, time_interleaved
from .workloads import BASELINE, Config, Profile

QUANTITIES = ("op", "step")
META_LR = 1e-3  # Adam, for the step quantity
# Every provider's step uses the same optimizer: torch's fused Adam (one kernel over
# all parameters, CPU and CUDA), so that the optimizer's per-tensor loop does not hide
# the meta-gradient's time at small T (bench/NOTES.md).
ADAM_KW = dict(fused=True)


def _callable(quantity: str, loss_fn: Callable, params: List[Tensor], graphed: bool, data):
    """The timed function: ``op`` returns the meta-gradient; ``step`` does a whole Adam meta-step."""
    if quantity == "op":
        def fn():
            return torch.autograd.grad(loss_fn(), params)
    else:
        opt = torch.optim.Adam(params, lr=META_LR, **ADAM_KW, capturable=graphed)

        def fn():
            opt.zero_grad(set_to_none=True)
            loss_fn().backward()
            opt.step()
    return _cuda_graph(fn, data) if graphed else fn


def _rel_err(got, ref) -> float:
    num = math.sqrt(sum(float((g.double() - r.double()).pow(2).sum()) for g, r in zip(got, ref)))
    den = math.sqrt(sum(float(r.double().pow(2).sum()) for r in ref))
    return num / max(den, 1e-30)


def prepare(cfg: Config, prov: Provider, quantity: str, base_model: nn.Module, data, prof: Profile,
            ref_grads: Dict) -> Tuple[dict, Optional[Callable]]:
    """Build one (config, provider, quantity) and make its first, untimed call.

    Returns ``(row, fn)``: ``fn`` is the timed callable, or ``None`` when the row is
    ``skipped`` or ``failed`` (the reason in ``note``). Never raises for a provider's
    failure. The first call also gives the meta-gradient for ``grad_err``.
    """
    device = prof.device
    row = dict(provider=prov.name, quantity=quantity, status="ok", note="")
    try:
        why = prov.limits(cfg, prof)
        if why:
            return dict(row, status="skipped", note="; ".join(why)), None
        model = copy.deepcopy(base_model)
        op_loss, step_loss = prov.build(cfg, model, data)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        fn = _callable(quantity, op_loss if quantity == "op" else step_loss, list(model.parameters()),
                       prov.graphed, data)
        out = fn()
        _sync(device)
        if device == "cuda":
            row["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
        elif prof.cpu_memory:
            row["peak_mem_mb"] = cpu_peak_mb(fn)
        if quantity == "op":
            got = [g.detach().clone() for g in out]
            if prov.name == BASELINE:
                ref_grads[cfg] = got
            elif cfg in ref_grads:
                row["grad_err"] = _rel_err(got, ref_grads[cfg])
        return row, fn
    except Exception as e:  # a provider's failure is a result, not a crash
        _recover(device)
        return dict(row, status="failed", note=_first_line(e)), None


def _recover(device: str):
    gc.collect()
    if device == "cuda":
        try:
            torch.cuda.synchronize()
        except Exception:
            pass
        torch.cuda.empty_cache()


def _finish(row: dict, cfg: Config, prof: Profile, med: float, p20: float, p80: float, n, timer: str) -> dict:
    s = med / 1e3
    gflops = cfg.flops / s / 1e9
    row.update(median_ms=med, p20_ms=p20, p80_ms=p80, samples=n, timer=timer, tasks_per_s=cfg.T / s,
               gflops=gflops, peak_fraction=gflops / prof.peak_gflops)
    return row


def run_one(cfg: Config, prov: Provider, quantity: str, base_model: nn.Module, data, prof: Profile,
            ref_grads: Dict) -> dict:
    """Measure one (config, provider, quantity) on its own; never raises for a provider's failure."""
    row, fn = prepare(cfg, prov, quantity, base_model, data, prof, ref_grads)
    if fn is None:
        return row
    try:
        timing = time_fn(fn, prof.device, prof)
    except Exception as e:
        return dict(row, status="failed", note=_first_line(e))
    finally:
        del fn
        _recover(prof.device)
    return _finish(row, cfg, prof, *timing)


def measure_config(cfg: Config, provs: Sequence[Provider], quantity: str, base_model: nn.Module, data,
                   prof: Profile, ref_grads: Dict) -> List[dict]:
    """Rows for every provider on one (config, quantity).

    On the CPU the providers are timed interleaved (:func:`time_interleaved`); on a
    GPU one after the other (each with ``do_bench``, and its own peak memory).
    """
    if prof.device != "cpu":
        return [run_one(cfg, pr, quantity, base_model, data, prof, ref_grads) for pr in provs]
    prepared = [prepare(cfg, pr, quantity, base_model, data, prof, ref_grads) for pr in provs]
    live = [i for i, (_, fn) in enumerate(prepared) if fn is not None]
    timings = time_interleaved([prepared[i][1] for i in live], prof)
    rows = [row for row, _ in prepared]
    for i, t in zip(live, timings):
        if isinstance(t, BaseException):
            rows[i] = dict(rows[i], status="failed", note=_first_line(t))
        else:
            _finish(rows[i], cfg, prof, *t)
    del prepared, timings
    _recover(prof.device)
    return rows
