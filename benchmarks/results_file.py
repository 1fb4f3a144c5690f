"""What every benchmark script shares: the hardware line and writing results files
in the format of the project's benchmark results (one file per benchmark)."""

from __future__ import annotations

import argparse
import json
import os
from datetime import date
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def hardware() -> str:
    """Core count and CPU model, e.g. "2 cores, AMD EPYC, no GPU"."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores, {model}, no GPU"


def merge_results(
    benchmark: str, command: str, metrics: list[dict[str, Any]], path: Path | None = None
) -> dict[str, Any]:
    """Writes metrics into ``results/<benchmark>.json``, replacing same-named ones and
    keeping the others (several scripts may measure parts of one benchmark)."""
    path = path or RESULTS_DIR / f"{benchmark}.json"
    existing: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    names = {metric["name"] for metric in metrics}
    kept = [m for m in existing.get("metrics", []) if m.get("name") not in names]
    result = {
        "benchmark": benchmark,
        "hardware": hardware(),
        "command": command,
        "date": date.today().isoformat(),
        "metrics": kept + metrics,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(temporary, path)
    return result


def torch_device(parser: argparse.ArgumentParser, requested: str | None) -> str:
    """``requested`` ("cpu" or "cuda"), else "cuda" when torch sees a GPU; the
    parser's error when CUDA is asked for and none is visible."""
    import torch

    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    return device
