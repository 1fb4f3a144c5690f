"""Times the README's main command and records it in benchmarks/results/demo.json.

Run: .venv/bin/python benchmarks/demo_wall.py

Runs `ownchat demo` from a fresh state directory (so the one-time import of
SmolLM2 is included) and records its wall time, the held-out fact accuracy of
the fine-tuned version against the base model's (the baseline), and the PII
leakage probe's count. Then opens the report in a headless Chromium, checks
that every section and plot shows, and saves the screenshot beside the results.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_file import merge_results

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SECTIONS = ("funnel", "loss", "metrics", "answers", "leakage", "gate")


def _shrink(png: Path) -> None:
    """A 256-colour palette keeps the committed screenshot a few hundred KB (the report
    is text, tables and line plots, which a palette renders without visible loss)."""
    from PIL import Image

    with Image.open(png) as image:
        image.convert("RGB").quantize(colors=256).save(png, optimize=True)


def screenshot(report: Path, target: Path) -> list[str]:
    """Full-page screenshot of the report; returns the sections or plots that do not show."""
    from playwright.sync_api import sync_playwright

    missing = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            tab = browser.new_page(viewport={"width": 1200, "height": 900})
            tab.goto(report.as_uri())
            tab.screenshot(path=str(target), full_page=True)
            _shrink(target)
            for section in SECTIONS:
                box = tab.locator(f"section#{section}").bounding_box()
                if box is None or box["height"] < 40:
                    missing.append(f"section {section}")
            sources = tab.eval_on_selector_all(
                "img", "images => images.filter(i => i.naturalWidth === 0).map(i => i.src)"
            )
            missing += [f"plot {source}" for source in sources]
        finally:
            browser.close()
    return missing


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
        summary = json.loads((Path(home) / "demo" / "summary.json").read_text())
        shot = args.output.with_name("demo-report.png")
        missing = screenshot(Path(summary["report"]), shot)
    if missing:
        raise SystemExit(f"the report does not show: {', '.join(missing)}")
    base, tuned = summary["base_fact_accuracy"], summary["tuned_fact_accuracy"]
    questions = summary["heldout_questions"]
    metrics = [
        {
            "name": "demo_wall_s",
            "unit": "s",
            "higher_is_better": False,
            "ours": round(wall, 1),
            "baseline": None,
            "baseline_name": None,
            "ratio": None,
            "notes": "ownchat demo from a fresh state directory (.venv already set up): "
            "start five services, import SmolLM2, ingest and sanitize three files, LoRA "
            "fine-tune 2 epochs, evaluate base and fine-tuned, gate, deploy on vLLM (CPU), "
            "REST answer, PII probe, report, stop",
        },
        {
            "name": "heldout_fact_accuracy_finetuned",
            "unit": "share",
            "higher_is_better": True,
            "ours": round(tuned, 4),
            "baseline": round(base, 4),
            "baseline_name": "heldout_fact_accuracy_base (SmolLM2-135M-Instruct)",
            "ratio": round(tuned / base, 3) if base else None,
            "notes": f"{questions} held-out questions phrased unlike the training data, "
            "greedy replies checked against expected answers; ratio null when the base "
            "answers none",
        },
        {
            "name": "pii_values_leaked",
            "unit": "values",
            "higher_is_better": False,
            "ours": summary["planted_values_leaked"],
            "baseline": None,
            "baseline_name": None,
            "ratio": None,
            "notes": f"of {summary['planted_values_probed']} planted values, each asked for "
            "over REST from the deployed fine-tuned model",
        },
    ]
    result = merge_results("demo", "python benchmarks/demo_wall.py", metrics, args.output)
    print(json.dumps(result, indent=2))
    print(f"screenshot: {shot}")


if __name__ == "__main__":
    main()
