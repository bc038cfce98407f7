"""The benchmark tooling: smoke profile end to end, CSV layout, FLOP counts, plots."""
import csv
import os
import subprocess
import sys

import pytest
import torch

from metakern import benchmark as bm
from metakern.backends import available
from metakern.benchmark import measure, plots, results, timing, workloads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = ["--profile", "smoke", "--threads", "1"]


def _rows(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke run shared by the tests below: (rc, csv path, stdout)."""
    path = tmp_path_factory.mktemp("bench") / "x.csv"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = bm.main(SMOKE + ["--csv", str(path)])
    return rc, path, buf.getvalue()


def test_smoke_csv_columns_and_rows(smoke):
    rc, path, out = smoke
    assert rc == 0
    header, rows = _rows(path)
    assert header == bm.COLUMNS
    for col in ["date", "device", "torch", "triton", "python", "metakern", "git_rev", "workload", "T", "K", "order",
                "provider", "quantity", "median_ms", "p20_ms", "p80_ms", "tasks_per_s", "gflops", "peak_fraction",
                "peak_mem_mb", "speedup_vs_vmap"]:
        assert col in header

    prof = bm.make_profile("smoke", "cpu").expand()
    run = [p.name for p in bm.providers() if not p.unavailable("cpu")]
    assert {"vmap", "mk-torch", "loop"} <= set(run)
    # one row per (config, provider that can run here, quantity), in run order
    assert len(rows) == len(prof.configs) * len(run) * len(bm.QUANTITIES)
    assert {r["workload"] for r in rows} == set(bm.WORKLOADS)
    assert len({r["run_id"] for r in rows}) == 1
    for r in rows:
        assert r["device_type"] == "cpu" and r["torch"] == torch.__version__ and r["git_rev"]
        # the single-thread sgemm rate, on every row; this run has one thread, so it is the peak itself
        assert float(r["sgemm_1t_gflops"]) == float(r["peak_gflops"]) > 0
        assert r["status"] in ("ok", "skipped"), r  # no provider fails on these configs
        if r["status"] != "ok":
            continue
        assert float(r["peak_mem_mb"]) > 0  # the CPU allocator's peak over one call
        p20, med, p80 = float(r["p20_ms"]), float(r["median_ms"]), float(r["p80_ms"])
        assert 0 < p20 <= med <= p80
        T, secs = int(r["T"]), med / 1e3
        assert float(r["tasks_per_s"]) == pytest.approx(T / secs, rel=1e-4)
        assert float(r["gflops"]) == pytest.approx(int(r["flops"]) / secs / 1e9, rel=1e-4)
        assert float(r["peak_fraction"]) == pytest.approx(float(r["gflops"]) / float(r["peak_gflops"]), rel=1e-4)
        if r["provider"] == "vmap":
            assert float(r["speedup_vs_vmap"]) == 1.0
        else:
            assert float(r["speedup_vs_vmap"]) > 0
            if r["quantity"] == "op":  # every provider computes the same meta-gradient
                assert float(r["grad_err"]) < 1e-4, r
    assert "x_vmap" in out and "median_ms" in out  # the table went to stdout


def test_smoke_appends(smoke, tmp_path):
    _, path, _ = smoke
    copy = tmp_path / "y.csv"
    copy.write_bytes(path.read_bytes())
    n = len(_rows(copy)[1])
    assert bm.main(SMOKE + ["--csv", str(copy), "--workloads", "linear", "--providers", "vmap,mk",
                            "--backend", "torch", "--quantities", "op"]) == 0
    header, rows = _rows(copy)
    new = rows[n:]
    assert header == bm.COLUMNS
    assert {(r["workload"], r["provider"], r["quantity"]) for r in new} == {("linear", "vmap", "op"),
                                                                            ("linear", "mk-torch", "op"),
                                                                            ("linear", "mk-torch-2op", "op")}


def test_flops_by_hand():
    # sine 1-40-40-1, 10 support + 10 query: S = 1*40 + 40*40 + 40*1 = 1680 MACs per point,
    # F = 2*10*1680 = 33600 FLOPs per forward of one task's support (or query) set.
    F = 2 * 10 * 1680
    assert bm.meta_flops((1, 40, 40, 1), 25, 1, False, 10, 10) == 25 * (3 * F + 3 * F + 9 * F) == 12_600_000
    assert bm.meta_flops((1, 40, 40, 1), 25, 5, True, 10, 10) == 25 * (15 * F + 3 * F) == 15_120_000
    # 5-way 5-shot head 64->5: S = 320, Fs = 2*25*320, Fq = 2*75*320; K = 5, second order
    Fs, Fq = 16_000, 48_000
    assert bm.meta_flops((64, 5), 1, 5, False, 25, 75) == 3 * 5 * Fs + 3 * Fq + 9 * 5 * Fs == 1_104_000
    cfg = bm.Config(bm.WORKLOADS["sine"], 25, 1, False)
    assert cfg.flops == 12_600_000 and cfg.order == "second"
    # MAML's Omniglot MLP 784-256-128-64-64-5, 5 support + 75 query points:
    # S = 200704 + 32768 + 8192 + 4096 + 320 = 246080, Fs = 2*5*S, Fq = 2*75*S
    w = bm.WORKLOADS["omniglot-mlp"]
    assert (w.dims, w.n_support, w.n_query, w.loss, w.lr) == ((784, 256, 128, 64, 64, 5), 5, 75, "cross_entropy", 0.4)
    Fs, Fq = 2 * 5 * 246_080, 2 * 75 * 246_080
    assert bm.Config(w, 32, 1, False).flops == 32 * (12 * Fs + 3 * Fq) == 4_488_499_200
    assert bm.Config(w, 32, 5, False).flops == 32 * (60 * Fs + 3 * Fq) == 8_268_288_000


def test_cpu_peak_mb_counts_live_bytes():
    def fn():
        a = torch.empty(2 ** 18)  # 1 MiB of float32
        b = torch.empty(2 ** 17)  # 0.5 MiB, live together with a
        del a, b
        c = torch.empty(2 ** 18)  # reuses a's freed space: the peak stays at 1.5 MiB
        return c

    assert bm.cpu_peak_mb(fn) == pytest.approx(1.5, abs=0.01)


@pytest.mark.skipif(bool(available()["cpp"]), reason="the cpp backend is not built (test_build checks it is in CI)")
def test_cpp_memory_does_not_grow_with_steps():
    """Second order: the cpp op keeps the inputs for the backward and recomputes the
    trajectory in per-thread scratch, so what one meta-gradient allocates through
    PyTorch does not depend on K; vmap's graph grows with every inner step."""
    w = bm.WORKLOADS["sine"]
    prof = bm.make_profile("smoke", "cpu")
    provs = {p.name: p for p in bm.providers()}
    data, base = workloads.make_data(w, 64, "cpu"), workloads.make_model(w, "cpu")
    mem = {}
    for K in (1, 6):
        cfg = bm.Config(w, 64, K, False)
        for name in ("mk-cpp", "vmap"):
            row, fn = measure.prepare(cfg, provs[name], "op", base, data, prof, {})
            assert fn is not None, row
            mem[name, K] = row["peak_mem_mb"]
    assert mem["mk-cpp", 6] == pytest.approx(mem["mk-cpp", 1], rel=1e-6)
    assert mem["vmap", 6] > 2 * mem["vmap", 1]


def test_interleaved_rounds_time_bursts(monkeypatch):
    """Each round calls every callable in a burst sized from its warmup time to about
    burst_ms (at least once, at most max_burst), and samples the burst's mean. The
    clock is simulated: each call moves it by that callable's cost."""
    now = [0.0]
    calls = {"fast": 0, "slow": 0, "bad": 0}
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])

    def fast():
        calls["fast"] += 1
        now[0] += 0.0001

    def slow():
        calls["slow"] += 1
        now[0] += 0.004

    def bad():
        calls["bad"] += 1
        raise ValueError("broken provider")

    prof = bm.Profile([], warmup_s=0.01, min_reps=4, min_time_s=0.0, max_time_s=1.0, burst_ms=10.0, max_burst=7)
    out = timing.time_interleaved([fast, slow, bad], prof)
    (f_med, _, _, f_n, timer), (s_med, _, _, s_n, _) = out[0], out[1]
    assert isinstance(out[2], ValueError) and calls["bad"] == 1  # dropped after its first failure
    assert f_n == s_n == 4 and timer == "perf_counter, interleaved bursts"
    assert s_med == pytest.approx(4.0) and f_med == pytest.approx(0.1)  # per-call means, not burst totals
    # 3 warmup rounds (0.0041 s each, to 0.01 s) of one call, then 4 rounds of bursts:
    # int(10 ms / 4 ms) = 2 slow calls, and max_burst = 7 fast ones (10 / 0.1 = 100)
    assert calls["slow"] == 3 + 4 * 2 and calls["fast"] == 3 + 4 * 7
    single = timing.time_interleaved([fast], bm.Profile([], warmup_s=0.0, min_reps=3, min_time_s=0.0, burst_ms=0.0))
    assert single[0][3] == 3 and single[0][4] == "perf_counter, interleaved"


def test_profiles_cover_the_brief():
    quick = bm.make_profile("quick", "cpu").expand().configs
    assert [(c.workload.name, c.T, c.K, c.order) for c in quick][:2] == [("sine", 25, 1, "second"),
                                                                        ("sine", 1024, 5, "second")]
    assert {c.workload.name for c in quick} == {"sine", "head", "omniglot-mlp", "wordnet-mlp"}
    assert {(c.T, c.K, c.order) for c in quick if c.workload.name == "omniglot-mlp"} == {(32, 1, "second"),
                                                                                        (32, 5, "second")}
    assert {(c.T, c.K, c.order) for c in quick if c.workload.name == "wordnet-mlp"} == {(32, 1, "second"),
                                                                                       (32, 5, "second")}
    assert bm.WORKLOADS["wordnet-mlp"].dims == (384, 256, 5)
    gpu = bm.make_profile("gpu", "cuda").expand().configs
    assert max(c.T for c in gpu) == 16384 and {c.K for c in gpu} == {1, 5}
    assert {c.workload.name for c in gpu} == set(bm.WORKLOADS)
    assert {c.order for c in gpu} == {"first", "second"}


def test_plot_end_to_end(smoke, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install 'metakern[bench]')")
    png = tmp_path / "p.png"
    assert bm.main(SMOKE + ["--no-csv", "--workloads", "sine", "--providers", "vmap,mk", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # bench/plot.py draws from a CSV
    _, path, _ = smoke
    out = tmp_path / "from_csv.png"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "plot.py"), str(path), "-o", str(out)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- plots of a synthetic table


def _synthetic_rows(seed, Ts=(8, 64), Ks=(1, 5), run_id="run-1"):
    """A results table as the CSV gives it (strings), fresh random timings: workload
    "sine" at every T with K=1 and at every K with T=Ts[0]; "head" at one config;
    loop skipped above T=8; mk-torch's meta-gradient wrong on head. Returns
    (rows, speedups) with speedups[(workload, T, K, provider)] = vmap / provider (step)."""
    g = torch.Generator().manual_seed(seed)
    configs = sorted({("sine", T, 1) for T in Ts} | {("sine", Ts[0], K) for K in Ks}) + [("head", 16, 5)]
    rows, speedups = [], {}
    for w, T, K in configs:
        for q in ("op", "step"):
            ms = {p: float(torch.empty(()).uniform_(0.5, 20.0, generator=g)) for p in ("vmap", "mk-cpp", "mk-torch")}
            for p in ("vmap", "mk-cpp", "mk-torch", "loop"):
                r = dict(run_id=run_id, workload=w, dims="1-40-40-1" if w == "sine" else "64-5", loss="mse",
                         n_support="10", n_query="10", T=str(T), K=str(K), order="second", provider=p, quantity=q,
                         status="ok", note="", median_ms="", p20_ms="", p80_ms="", peak_mem_mb="",
                         speedup_vs_vmap="", grad_err="")
                if p == "loop" and T > 8:
                    r.update(status="skipped", note=f"T={T} > 8")
                else:
                    m = ms.get(p, 30.0)
                    r.update(median_ms=f"{m:.6g}", p20_ms=f"{0.9 * m:.6g}", p80_ms=f"{1.1 * m:.6g}",
                             peak_mem_mb=f"{(1.0 if p == 'mk-cpp' else K) * T * 0.01:.6g}",
                             speedup_vs_vmap=f"{ms['vmap'] / m:.6g}")
                    if q == "op" and p != "vmap":
                        r["grad_err"] = "0.5" if (w, p) == ("head", "mk-torch") else "1e-07"
                    if q == "step":
                        speedups[w, T, K, p] = float(r["speedup_vs_vmap"])
                rows.append(r)
    return rows, speedups


def _titles(fig):
    return [ax.get_title() for ax in fig.axes if ax.get_visible()]


def test_plot_sections_from_a_synthetic_table(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install 'metakern[bench]')")
    rows, speedups = _synthetic_rows(seed=int(torch.randint(0, 2 ** 31, ())))
    groups = plots.speedup_groups(rows)
    # one group per config in workload order (sine first, as in the rows), then K, then T
    assert [k for k, _ in groups] == [("sine", 8, 1, "second"), ("sine", 64, 1, "second"), ("sine", 8, 5, "second"),
                                      ("head", 16, 5, "second")]
    for (w, T, K, _), bars in groups:
        assert [b.provider for b in bars] == ["mk-cpp", "mk-torch", "loop"]  # vmap is the 1x line, not a bar
        for b in bars:
            if b.provider == "loop" and T > 8:
                assert (b.speedup, b.status) == (None, "skipped")
            else:
                assert b.status == "ok" and b.speedup == pytest.approx(speedups[w, T, K, b.provider], rel=1e-5)
        wrong = {b.provider for b in bars if b.grad_err is not None and b.grad_err > plots.GRAD_ERR_FLAG}
        assert wrong == ({"mk-torch"} if w == "head" else set())
    # memory against K where a (workload, T) has two K; time against T where a (workload, K) has two T
    mem, tim = plots.memory_panels(rows), plots.time_panels(rows)
    assert set(mem) == {("sine", 8, "second")} and set(tim) == {("sine", 1, "second")}
    assert [pt[0] for pt in mem["sine", 8, "second"]["vmap"]] == [1, 5]
    assert [pt[0] for pt in tim["sine", 1, "second"]["mk-cpp"]] == [8, 64]
    assert [pt[0] for pt in tim["sine", 1, "second"]["loop"]] == [8]  # skipped above T=8: no point there

    fig = plots.make_figure(rows, title="synthetic")
    assert _titles(fig) == ["", "sine T=8: peak memory", "sine K=1: time per step"]  # bars, memory, time
    bar_ax = fig.axes[0]
    assert bar_ax.get_ylabel() == "speedup over vmap, step"
    assert [t.get_text().replace("\n", " ") for t in bar_ax.get_xticklabels()] == [
        "sine T=8 K=1", "sine T=64 K=1", "sine T=8 K=5", "head T=16 K=5"]
    labels = {t.get_text() for t in bar_ax.texts}
    assert {plots._ratio(speedups["sine", 8, 1, "mk-cpp"]), "loop skipped"} <= labels  # ratios above the bars
    assert any(t.startswith(plots._ratio(speedups["head", 16, 5, "mk-torch"]) + "\nerr 5e-01") for t in labels)
    assert any(line.get_ydata()[0] == 1.0 for line in bar_ax.get_lines())  # the 1x line
    png = tmp_path / "synthetic.png"
    assert plots.plot_rows(rows, str(png), title="synthetic") == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_of_a_profile_with_a_single_T_has_no_time_panel(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install 'metakern[bench]')")
    rows, _ = _synthetic_rows(seed=int(torch.randint(0, 2 ** 31, ())), Ts=(8,))
    assert plots.time_panels(rows) == {}
    assert set(plots.memory_panels(rows)) == {("sine", 8, "second")}
    fig = plots.make_figure(rows)
    assert not any("time per" in t for t in _titles(fig)) and "sine T=8: peak memory" in _titles(fig)
    # one K as well: the bars alone
    one = [r for r in rows if r["K"] == "1"]
    assert plots.memory_panels(one) == {} and plots.time_panels(one) == {}
    assert _titles(plots.make_figure(one)) == [""]
    png = tmp_path / "one.png"
    plots.plot_rows(one, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the op quantity on request; only ok rows of other workloads: a clear error
    assert plots.make_figure(one, quantity="op").axes[0].get_ylabel() == "speedup over vmap, op"
    with pytest.raises(ValueError, match="no successful rows"):
        plots.make_figure(one, workloads=["mlp-ce"])


def test_plot_takes_the_median_of_several_runs():
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install 'metakern[bench]')")
    seed = int(torch.randint(0, 2 ** 31, ()))
    runs = [_synthetic_rows(seed + i, Ts=(8,), Ks=(1,), run_id=f"run-{i}") for i in range(3)]
    rows = [r for rs, _ in runs for r in rs]
    (key, bars), _ = plots.speedup_groups(rows)
    cpp = next(b for b in bars if b.provider == "mk-cpp")
    vals = sorted(sp["sine", 8, 1, "mk-cpp"] for _, sp in runs)
    assert key == ("sine", 8, 1, "second") and cpp.speedup == pytest.approx(vals[1], rel=1e-5)


def test_provider_colors_are_fixed_and_pair_the_two_op_variant():
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install 'metakern[bench]')")
    names = [p.name for p in bm.providers()] + ["some-new-provider"]
    colors = {n: plots.provider_color(n) for n in names}
    assert len({colors[n] for n in names if n in plots._TAB20}) == len([n for n in names if n in plots._TAB20])
    assert plots.provider_color("some-new-provider") == colors["some-new-provider"]  # stable
    # mk-cpp and mk-cpp-2op: the dark and light shade of one tab20 hue
    assert plots._TAB20["mk-cpp-2op"] == plots._TAB20["mk-cpp"] + 1


# ----------------------------------------------------------------------------- the CSV across versions


def test_csv_of_an_older_version_gets_the_new_column(tmp_path, capsys):
    """A CSV written before sgemm_1t_gflops existed is rewritten with the current header
    (its rows kept, the new cells empty) and then appended to; a foreign header is refused."""
    old_cols = [c for c in bm.COLUMNS if c not in results.ADDED_COLUMNS]
    g = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 31, ())))
    old_rows = [{c: f"{float(torch.rand((), generator=g)):.6g}" for c in old_cols} for _ in range(3)]
    path = tmp_path / "old.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, old_cols)
        w.writeheader()
        w.writerows(old_rows)
    sink = results.CsvSink(str(path))
    assert "added the column(s) sgemm_1t_gflops" in capsys.readouterr().out
    sink.write(dict(old_rows[0], sgemm_1t_gflops=91.5))
    header, rows = _rows(path)
    assert header == bm.COLUMNS and len(rows) == 4
    for got, want in zip(rows, old_rows):
        assert {c: got[c] for c in old_cols} == want and got["sgemm_1t_gflops"] == ""
    assert rows[3]["sgemm_1t_gflops"] == "91.5"
    results.CsvSink(str(path))  # the current header: nothing to do
    assert capsys.readouterr().out == "" and _rows(path)[0] == bm.COLUMNS

    foreign = tmp_path / "foreign.csv"
    foreign.write_text("date,something_else\n1,2\n")
    with pytest.raises(SystemExit, match="other columns than this version writes"):
        results.CsvSink(str(foreign))
    assert foreign.read_text() == "date,something_else\n1,2\n"  # left as it was


def test_measure_peak_one_thread_restores_the_thread_count():
    before = torch.get_num_threads()
    assert timing.measure_peak("cpu", 64, threads=1) > 0
    assert torch.get_num_threads() == before


def test_report_shows_the_single_thread_sgemm_share(smoke, tmp_path):
    _, path, _ = smoke
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def report(csv_path):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "report.py"), str(csv_path)],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        return r.stdout.splitlines()

    # a one-thread run: its peak is the single-thread rate, said once, no second column
    lines = report(path)
    assert "(the single-thread sgemm rate)" in lines[0] and "1-thread sgemm" not in lines[2]
    # a run with more threads measured the single-thread rate apart: a column of its own
    header, rows = _rows(path)
    for r in rows:
        r["sgemm_1t_gflops"] = f"{float(r['peak_gflops']) / 1.7:.6g}"
    other = tmp_path / "threads.csv"
    with open(other, "w", newline="") as f:
        w = csv.DictWriter(f, header)
        w.writeheader()
        w.writerows(rows)
    lines = report(other)
    assert "one thread" in lines[0] and "% of 1-thread sgemm" in lines[2]
    row = next(line for line in lines if line.startswith("| omniglot-mlp") and "| vmap |" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    want = next(x for x in rows if x["workload"] == "omniglot-mlp" and x["provider"] == "vmap"
                and x["quantity"] == "step")
    assert float(cells[8]) == pytest.approx(100 * float(want["gflops"]) / float(want["sgemm_1t_gflops"]), abs=0.06)


def test_plot_without_matplotlib(monkeypatch, tmp_path, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    png = tmp_path / "p.png"
    rc = bm.main(SMOKE + ["--no-csv", "--workloads", "linear", "--providers", "mk", "--backend", "torch",
                          "--quantities", "op", "--plot", str(png)])
    assert rc == 2 and not png.exists()
    assert "needs matplotlib" in capsys.readouterr().err


def test_bad_flags():
    with pytest.raises(SystemExit, match="--providers"):
        bm.main(SMOKE + ["--no-csv", "--providers", "nonsense"])
    with pytest.raises(SystemExit):
        bm.main(SMOKE + ["--no-csv", "--T", "0"])


TINY = SMOKE + ["--workloads", "linear", "--providers", "mk", "--backend", "torch", "--quantities", "op"]


def test_default_results_go_to_the_documented_folder_not_the_cwd(monkeypatch, tmp_path, capsys):
    """Without --out/--csv the rows go to ~/metakern-bench/bench.csv, wherever the command runs."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    assert bm.main(TINY) == 0
    assert os.listdir(cwd) == []  # nothing written where it was run
    path = home / "metakern-bench" / "bench.csv"
    header, rows = _rows(path)
    assert header == bm.COLUMNS and rows
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines.index(f"# results: appending to {path}") < min(  # said before the run
        i for i, line in enumerate(lines) if line.startswith("# metakern bench"))
    assert f"appended to {path}" in out  # and after it


def test_out_folder(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    assert bm.main(TINY + ["--out", "res"]) == 0
    path = tmp_path / "res" / "bench.csv"
    assert _rows(path)[1] and f"appended to {path}" in capsys.readouterr().out
    # --csv names the file itself; --no-csv writes none
    assert bm.main(TINY + ["--out", "res", "--csv", "other.csv"]) == 0
    assert (tmp_path / "other.csv").exists() and len(_rows(path)[1]) == len(_rows(tmp_path / "other.csv")[1])
    assert bm.main(TINY + ["--out", "none", "--no-csv"]) == 0
    assert not (tmp_path / "none").exists()
    assert "# results: no CSV (--no-csv)" in capsys.readouterr().out


def test_unwritable_results_folder_is_refused_before_the_run(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit, match=r"cannot write .*--out DIR, --csv PATH or --no-csv"):
        bm.main(TINY + ["--out", str(blocker / "sub")])


def test_help_names_the_default_folder():
    assert "~/metakern-bench" in " ".join(bm.cli.build_parser().format_help().split())
    # the repository's own script keeps writing into the checkout's bench/results/
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "run.py"), "--help"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert os.path.join(ROOT, "bench", "results") in " ".join(r.stdout.split())
