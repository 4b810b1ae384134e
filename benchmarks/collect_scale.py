"""How long `hpcbench collect` takes on many experiments, and how much memory it needs.

Run: python benchmarks/collect_scale.py [--experiments 1000] [--points 20] [--repeat 3] [--report]

Makes N synthetic experiment directories (the real layout, rows with every POINT_COLUMNS column) in a
temporary folder, then times: discovery + reading + dedup (the collect step, goal under 3 s for
1,000 x 20), writing the merged CSV, and with --report the tables + HTML and the plots separately.
Peak memory: tracemalloc's peak of Python allocations in a separate run (tracing slows the timed run)
and the process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

GOAL_S = 3.0


def make_tree(root: Path, experiments: int, points: int) -> None:
    from hpcbench.report.synthetic import sweep_rows, write_experiment

    sites = ("aurora", "polaris", "slurm-h100", "slurm-gb200")
    for i in range(experiments):
        site = sites[i % len(sites)]
        name = f"2025{1 + i // 28 % 12:02d}{1 + i % 28:02d}T{i % 24:02d}0000Z-{i:06x}"
        write_experiment(root, site, "llama-3.1-70b-instruct", name,
                         sweep_rows(name, site, "llama-3.1-70b-instruct", points, nodes=1 + i % 2,
                                    scale=1.0 + i % 7 / 10))


def timed(fn, repeat: int) -> tuple[float, float, object]:
    """(first run s, best of the rest s, last result)."""
    times, result = [], None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times[0], min(times[1:] or times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", type=int, default=1000)
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--report", action="store_true", help="also time tables + HTML and the plots")
    args = parser.parse_args()

    t0 = time.perf_counter()
    import pandas  # noqa: F401  (import cost is reported apart from collect)

    from hpcbench.report.collect import collect_points, write_table
    t_import = time.perf_counter() - t0

    with tempfile.TemporaryDirectory(prefix="collect-scale-") as tmp:
        root = Path(tmp) / "runs"
        t0 = time.perf_counter()
        make_tree(root, args.experiments, args.points)
        t_make = time.perf_counter() - t0

        first, best, got = timed(lambda: collect_points([root]), args.repeat)
        rows = len(got.points)
        out = Path(tmp) / "report"
        out.mkdir()
        _, t_csv, _ = timed(lambda: write_table(got.points, out, ["csv"]), 1)

        cmd = [sys.executable, "-m", "hpcbench", "collect", str(root), "-o", str(Path(tmp) / "cli"),
               "--format", "csv", "--no-plots"]
        t0 = time.perf_counter()
        cli = subprocess.run(cmd, capture_output=True, text=True)
        t_cli = time.perf_counter() - t0
        if cli.returncode != 0:
            print(cli.stderr, file=sys.stderr)

        tracemalloc.start()
        collect_points([root])
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()

        print(f"experiments x points      {args.experiments} x {args.points} = {rows} rows "
              f"(tree made in {t_make:.2f} s)")
        print(f"import pandas + collect   {t_import:.2f} s (once per process)")
        print(f"collect (first run)       {first:.3f} s")
        print(f"collect (best of {args.repeat})       {best:.3f} s   goal < {GOAL_S:.0f} s: "
              + ("met" if best < GOAL_S else "NOT MET"))
        print(f"write merged points.csv   {t_csv:.3f} s")
        print(f"hpcbench collect CLI      {t_cli:.3f} s (new process: imports, collect, points.csv; "
              f"--format csv --no-plots)")
        if args.report:
            from hpcbench.report.build import write_report

            _, t_html, _ = timed(lambda: write_report(got, out, ["md", "html"], plots=False), 1)
            from hpcbench.report.plots import make_plots

            _, t_plots, _ = timed(lambda: make_plots(got.points, out / "plots"), 1)
            print(f"tables + md + html        {t_html:.3f} s")
            print(f"plots (3 PNG)             {t_plots:.3f} s")
        print(f"peak Python allocations   {peak / 2**20:.1f} MiB (tracemalloc, one collect)")
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        print(f"max resident set size     {rss_kib / 1024:.1f} MiB (whole process)")
        return 0 if best < GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
