"""The data benchmark: our PII scan against Presidio's pattern recognizers, and our
MinHash dedup against a plain datasketch loop, on real chat text (ShareGPT).

Run: make bench-data   (installs requirements/bench.txt, then runs this file)
Writes benchmarks/results/data.json. Each comparison runs ours and the
baseline in this one process on the same input, single-threaded.
"""

from __future__ import annotations

import argparse

from data_dedup import run_dedup_benchmark
from data_pii import run_pii_benchmark
from results_file import merge_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pii-mb", type=float, default=30.0, help="MB of chat text for our scan")
    parser.add_argument("--presidio-mb", type=float, default=2.0, help="MB for Presidio")
    parser.add_argument("--dedup-mb", type=float, default=15.0, help="MB of chat text for dedup")
    args = parser.parse_args()
    metrics = run_pii_benchmark(args.pii_mb, args.presidio_mb)
    metrics += run_dedup_benchmark(args.dedup_mb)
    result = merge_results("data", "make bench-data", metrics)
    for metric in result["metrics"]:
        print(f"{metric['name']:40s} ours={metric['ours']!s:>10} ratio={metric['ratio']}")


if __name__ == "__main__":
    main()
