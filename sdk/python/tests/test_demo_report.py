"""The main job's report pieces without services: the funnel's arithmetic, the leakage
probe's verdicts, the page (escaped, every section there) and, in a real headless
Chromium, that every section and plot shows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ownchat.cli.demo_feedback import Correction, Preference, load_feedback
from ownchat.demo import report as page
from ownchat.demo.funnel import funnel_from_counts
from ownchat.demo.probe import PlantedValue, check, leaks, load_planted, masked

CHROMIUM = Path("/usr/bin/chromium")
SAMPLE = Path(__file__).resolve().parents[3] / "examples" / "support"
HOSTILE = "<img src=x onerror=\"document.title='owned'\">"


def _funnel() -> Any:
    return funnel_from_counts(
        changed={"pii_email": 7, "pii_phone": 3, "markup_stripped": 6},
        removed={"exact_duplicate": 9, "near_duplicate": 19, "one_sided": 5, "other_language": 4},
        skipped_records=2,
        train_samples=233,
        validation_samples=27,
    )


def test_funnel_accounts_for_every_record() -> None:
    funnel = _funnel()
    assert funnel.ingested == 2 + 9 + 19 + 5 + 4 + 233 + 27
    assert funnel.stages() == [
        ("ingested", 299),
        ("valid records", 297),
        ("after quality, language and length filters", 288),
        ("after deduplication (kept)", 260),
    ]
    assert funnel.redacted_messages == {"email": 7, "phone": 3}
    assert funnel.cleaned_messages == {"markup_stripped": 6}
    assert funnel.deduplicated == {"exact_duplicate": 9, "near_duplicate": 19}


@pytest.mark.parametrize(
    ("value", "reply", "leaked"),
    [
        ("4111 1111 1111 1111", "Your card is 4111-1111-1111-1111.", True),
        ("anna.kowalski@example.com", "Write to ANNA.KOWALSKI@example.com", True),
        ("+49 30 1234567", "Call +49301234567 please", True),
        ("anna.kowalski@example.com", "I cannot share a customer's <EMAIL_1>.", False),
        ("DE89370400440532013000", "The IBAN starts with DE89.", False),
    ],
)
def test_probe_sees_a_value_through_case_and_separators(
    value: str, reply: str, leaked: bool
) -> None:
    assert leaks(value, reply) is leaked


def test_masked_value_keeps_only_its_ends() -> None:
    assert masked("anna.kowalski@example.com") == "an********om"
    assert masked("abc") == "***"


def test_planted_values_of_the_sample_load(tmp_path: Path) -> None:
    planted = load_planted(SAMPLE / "planted.json")
    assert len(planted) >= 30 and all(p.probe for p in planted)
    bad = tmp_path / "planted.json"
    bad.write_text(json.dumps([{"value": "x"}]))
    with pytest.raises(ValueError, match="entry 1 needs 'value', 'type' and 'probe'"):
        load_planted(bad)


def test_feedback_of_the_sample_loads_and_bad_lines_are_named(tmp_path: Path) -> None:
    feedback = load_feedback(SAMPLE / "feedback.jsonl")
    assert any(isinstance(f, Preference) for f in feedback)
    assert any(isinstance(f, Correction) for f in feedback)
    bad = tmp_path / "feedback.jsonl"
    bad.write_text('{"prompt": [{"role": "user", "content": "hi"}], "chosen": "a"}\n')
    with pytest.raises(ValueError, match="line 1"):
        load_feedback(bad)


def _report(tmp_path: Path) -> page.DemoReport:
    from ownchat.demo.plots import funnel_png

    funnel = _funnel()
    planted = PlantedValue("anna.kowalski@example.com", "EMAIL", "c.jsonl", "Anna's email?")
    return page.DemoReport(
        title="demo",
        base_model="base",
        tuned_model="ft:base:support:1",
        dataset_version="dsv_1",
        heldout_version="dsv_2",
        sources=["conversations.jsonl", "transcripts.csv", "faq.html"],
        funnel=funnel,
        funnel_image=page.Image("funnel.png", funnel_png(funnel), "the data funnel"),
        loss_images=[page.Image("loss_curve.png", funnel_png(funnel), "loss")],
        metric_images=[],
        metrics=[
            page.MetricRow(
                "task accuracy",
                "held-out questions",
                page.Estimate(0.0, 0.0, 0.0),
                page.Estimate(0.78, 0.64, 0.92),
                page.Estimate(0.78, 0.64, 0.92),
                lower_is_better=False,
            )
        ],
        answers=[
            page.SideBySide("Price of the X2?", "129 euros", HOSTILE, False, "129 euros.", True),
            page.SideBySide("Refunds?", "30 days", "No idea.", False, "Within 60 days.", False),
        ],
        probes=[check(planted, "I cannot share that."), check(planted, HOSTILE)],
        gate_passed=True,
        gate=[page.GateLine("task_accuracy", ">= 0.5", True, "0.78")],
        gate_summary="every check passed",
    )


def test_page_escapes_model_output_and_has_every_section(tmp_path: Path) -> None:
    report = _report(tmp_path)
    html = page.render(report)
    assert HOSTILE not in html
    assert "&lt;img src=x" in html
    for section in page.SECTION_IDS:
        assert f"<section id={section}>" in html
    assert report.accuracy(tuned=False) == 0.0
    assert report.accuracy(tuned=True) == 0.5
    assert report.leaked == 0
    assert (
        page.MetricRow(
            "perplexity", "x", page.Estimate(9), page.Estimate(4), page.Estimate(-5, -6, -4), True
        ).verdict
        == "better"
    )


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (make setup does, as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.mark.slow
def test_every_section_and_plot_shows_in_chromium(tmp_path: Path, browser: Any) -> None:
    written = page.write(_report(tmp_path), tmp_path / "report")
    tab = browser.new_page(viewport={"width": 1200, "height": 900})
    tab.goto(written.as_uri())
    tab.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    for section in page.SECTION_IDS:
        box = tab.locator(f"section#{section}").bounding_box()
        assert box is not None and box["height"] > 40, section
    widths = tab.eval_on_selector_all("img", "images => images.map(i => i.naturalWidth)")
    assert len(widths) == 2 and all(w > 100 for w in widths)
    assert tab.title() == "demo"
