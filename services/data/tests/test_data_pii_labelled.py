"""Recall and precision per type on the labelled PII set (benchmarks/make_pii_labelled.py)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ownchat_data.pii import PiiScanner

LABELLED = Path(__file__).parent / "data" / "pii_labelled.jsonl"


def test_recall_and_precision_per_type_on_the_labelled_set() -> None:
    records = [json.loads(line) for line in LABELLED.read_text().splitlines()]
    scanner = PiiScanner()
    gold: Counter[str] = Counter()
    found: Counter[str] = Counter()
    predicted: Counter[str] = Counter()
    wrong: list[tuple[str, str]] = []
    for record in records:
        spans = scanner.scan(record["text"])
        for entity in record["entities"]:
            gold[entity["type"]] += 1
            if any(
                s.type == entity["type"] and s.start == entity["start"] and s.end == entity["end"]
                for s in spans
            ):
                found[entity["type"]] += 1
        for span in spans:
            predicted[span.type] += 1
            if not any(
                e["type"] == span.type and span.start < e["end"] and span.end > e["start"]
                for e in record["entities"]
            ):
                wrong.append((span.type, span.value))
    assert sum(gold.values()) >= 500 and len(gold) == 19
    recall = {kind: found[kind] / gold[kind] for kind in gold}
    assert min(recall.values()) >= 0.99, recall
    false_positives = Counter(kind for kind, _ in wrong)
    precision = {k: 1 - false_positives[k] / predicted[k] for k in predicted}
    assert min(precision.values()) >= 0.97, wrong
