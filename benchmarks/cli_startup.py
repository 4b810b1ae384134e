"""CLI start-up time on a login node: each light command vs a bare `python -c pass`, as a ratio.

Run: python benchmarks/cli_startup.py [--repeat N]
Slow shared filesystems multiply every module imported; the ratio shows what hpcbench adds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "hpcbench --help": [sys.executable, "-m", "hpcbench", "--help"],
    "hpcbench sites": [sys.executable, "-m", "hpcbench", "sites"],
    "hpcbench plan (aurora, 405b)": [sys.executable, "-m", "hpcbench", "plan", "--site", "aurora", "--model", "405b"],
    "hpcbench status (empty root)": [sys.executable, "-m", "hpcbench", "status", "--root", "/nonexistent"],
}


def best_of(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    base = best_of(COMMANDS["python -c pass"], args.repeat)
    print(f"{'command':34} {'median s':>9} {'x bare python':>14}")
    for name, cmd in COMMANDS.items():
        t = best_of(cmd, args.repeat)
        print(f"{name:34} {t:9.3f} {t / base:14.1f}")


if __name__ == "__main__":
    main()
