"""Times the README's main command and records it in benchmarks/results/demo.json.

Run: .venv/bin/python benchmarks/demo_wall.py

Runs `ownchat demo` from a fresh state directory (so the one-time import of
SmolLM2 is included) and records its wall time; there is no baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from results_file import hardware

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/demo.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "OWNCHAT_HOME": home}
        started = time.monotonic()
        subprocess.run(
            [str(Path(sys.executable).with_name("ownchat")), "demo"], cwd=ROOT, env=env, check=True
        )
        wall = time.monotonic() - started
    result = {
        "benchmark": "demo",
        "hardware": hardware(),
        "command": "python benchmarks/demo_wall.py",
        "date": date.today().isoformat(),
        "metrics": [
            {
                "name": "demo_wall_s",
                "unit": "s",
                "higher_is_better": False,
                "ours": round(wall, 1),
                "baseline": None,
                "baseline_name": None,
                "ratio": None,
                "notes": "ownchat demo from a fresh state directory: start five services, "
                "import SmolLM2, ingest, fine-tune, evaluate base and fine-tuned, deploy on "
                "vLLM (CPU), one REST chat completion, stop",
            }
        ],
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
