"""How long `textloc --help` and each command's `--help` take, as a user runs them: a fresh process
each time (its imports included), the median of --repeats runs, into bench/results/cli.json.

    python bench/bench_cli.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("", "layers", "generate", "localize", "edit", "guard", "finetune", "app")


def seconds(arguments: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "textloc", *arguments, "--help"], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    median = {command or "textloc": statistics.median(seconds([command] if command else []) for _ in range(args.repeats)) for command in COMMANDS}
    result = {"repeats": args.repeats, "python": sys.version.split()[0], "median_seconds": median, "slowest": max(median.values())}
    path = ROOT / "bench" / "results" / "cli.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
