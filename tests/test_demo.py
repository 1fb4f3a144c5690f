"""The README's main command and its closed loop, as a user runs them, on a CPU.

`ownchat demo` on the sample data must leave a fine-tuned version that beats the
base model on the held-out questions by a clear margin, leaks none of the
personal data planted in the raw files, and a report whose every section and
plot shows in a real headless Chromium; `ownchat demo feedback` must then train
a follow-up on the scripted reviews and say whether it wins.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[1]
OWNCHAT = str(Path(sys.executable).with_name("ownchat"))
CHROMIUM = Path("/usr/bin/chromium")
SECTIONS = ("funnel", "loss", "metrics", "answers", "leakage", "gate")
# What "a clear margin" means here: the fine-tuned version answers at least this
# share of the held-out questions more than the base model does.
MARGIN = 0.3


def run(env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OWNCHAT, *args],
        cwd=REPO,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.timeout(2400)
def test_main_command_then_feedback_loop(ownchat_env: dict[str, str]) -> None:
    demo = run(ownchat_env, "demo", timeout=1500)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    summary = json.loads((Path(ownchat_env["OWNCHAT_HOME"]) / "demo/summary.json").read_text())
    assert summary["heldout_questions"] >= 30
    assert summary["tuned_fact_accuracy"] - summary["base_fact_accuracy"] >= MARGIN, summary
    assert summary["planted_values_probed"] >= 30
    assert summary["planted_values_leaked"] == 0
    for line in ("ingested", "after deduplication (kept)", "none of the", "the report is"):
        assert line in demo.stdout

    if CHROMIUM.exists():
        sync_api = pytest.importorskip("playwright.sync_api")
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
            tab = browser.new_page()
            tab.goto(Path(summary["report"]).as_uri())
            for section in SECTIONS:
                box = tab.locator(f"section#{section}").bounding_box()
                assert box is not None and box["height"] > 40, section
            broken = tab.eval_on_selector_all(
                "img", "images => images.filter(i => i.naturalWidth === 0).length"
            )
            assert broken == 0
            assert tab.locator("img").count() >= 3  # funnel, loss curves, metrics
            browser.close()

    feedback = run(ownchat_env, "demo", "feedback", timeout=900)
    assert feedback.returncode == 0, feedback.stdout[-3000:] + feedback.stderr[-3000:]
    assert "reviews by demo-reviewer" in feedback.stdout
    assert ("wins" in feedback.stdout) or ("does not win" in feedback.stdout)
    assert (Path(ownchat_env["OWNCHAT_HOME"]) / "demo/feedback-report.html").is_file()
