"""The per-sample sanitization steps of an upload, and their report.

Cleaning (``cleaning.py``) runs on every message, then the quality filters
(``quality.py``) decide whether a conversation is kept. Preference pairs are
cleaned; a pair left with an empty side is removed.

Personal data is replaced in everything a sample stores, a chat sample's
expected answer included, with one placeholder scope per sample: a value in a
message and in the expected answer gets the same placeholder, so the
evaluator's exact and contains checks still compare like with like.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

from ownchat_data.chat_jsonl import ChatMessage, ChatSample
from ownchat_data.cleaning import Cleaner, repair_encoding
from ownchat_data.documents import TextSample
from ownchat_data.language import conversation_language
from ownchat_data.pattern_text import literal_readings
from ownchat_data.pii import RedactionMode, Redactor
from ownchat_data.preference_jsonl import PreferenceSample
from ownchat_data.quality import QualityFilter
from ownchat_data.records import RecordError, Sample
from ownchat_data.store import SanitizationReport


@dataclass(frozen=True)
class SanitizeOptions:
    """Which steps run (all by default)."""

    clean: bool = True
    quality_filters: bool = True
    remove_near_duplicates: bool = True
    # None: personal data and secrets are left as uploaded.
    pii_mode: RedactionMode | None = RedactionMode.PLACEHOLDER
    # Empty: every language is kept.
    languages: frozenset[str] = frozenset()
    # Samples over this many tokens are removed; 0: the base model's context.
    # Applied by the upload, which holds the tokenizer.
    max_tokens: int = 0


class Sanitizer:
    """Applies the steps to one sample at a time and counts what they did."""

    def __init__(self, options: SanitizeOptions, pii_salt: bytes | None = None) -> None:
        self._options = options
        self._redactor = (
            Redactor(options.pii_mode, salt=pii_salt) if options.pii_mode is not None else None
        )
        self._pii: Counter[str] = Counter()
        self._cleaner = Cleaner()
        self._quality = QualityFilter()
        self._removed: Counter[str] = Counter()

    def apply(self, sample: Sample) -> Sample | RecordError | None:
        """The sample to store, None when a step removed it, or why it is refused.

        A refused sample is a bad record of the upload (reported with its
        position, and subject to the upload's bad record policy).
        """
        cleaned = self._clean(sample)
        if cleaned is None or self._redactor is None:
            return cleaned
        if isinstance(cleaned, ChatSample) and (refused := self._pattern_pii(cleaned)):
            return refused
        return self._redact(cleaned)

    def _pattern_pii(self, sample: ChatSample) -> RecordError | None:
        """Refuses a regex expected answer that holds personal data or a secret.

        A pattern cannot be redacted safely. Its values hide behind escapes
        (``alice@example\\.com`` is no address to the scanner, so redacting the
        pattern as written would keep it), and a replacement spliced into a
        pattern can break its syntax or change what it matches. So the pattern
        is scanned as written and as its literal readings, and a sample whose
        pattern shows any value is refused, naming the types found but never
        the values: the author can move the value out of the pattern, or use
        an exact or contains answer, which is redacted like the messages.
        """
        assert self._redactor is not None
        expected = sample.expected
        if expected is None or expected.kind != "regex":
            return None
        found = sorted(
            {
                span.type.value
                for reading in literal_readings(expected.answer)
                for span in self._redactor.scanner.scan(reading)
            }
        )
        if not found:
            return None
        return RecordError(
            sample.record,
            f"'expected.answer' is a regular expression holding personal data or secrets "
            f"({', '.join(found)}), which cannot be redacted from a pattern safely: "
            "remove them from the pattern, or give the answer as kind exact or contains",
        )

    def _redact(self, sample: Sample) -> Sample:
        """Personal data and secrets replaced, one placeholder scope per sample."""
        assert self._redactor is not None
        if isinstance(sample, ChatSample):
            expected = sample.expected
            # A regex answer that gets here holds nothing the scanner finds (see
            # _pattern_pii), so it is stored as written.
            answer = [expected.answer] if expected and expected.kind != "regex" else []
            texts, counts = self._redactor.redact_conversation(
                [*(m.content for m in sample.messages), *answer]
            )
            messages = texts[: len(sample.messages)]
            sample = replace(
                sample,
                messages=tuple(
                    ChatMessage(m.role, text)
                    for m, text in zip(sample.messages, messages, strict=True)
                ),
                expected=replace(expected, answer=texts[-1]) if expected and answer else expected,
            )
        elif isinstance(sample, PreferenceSample):
            texts, counts = self._redactor.redact_conversation(
                [*(m.content for m in sample.prompt), sample.chosen, sample.rejected]
            )
            *prompt, chosen, rejected = texts
            sample = replace(
                sample,
                prompt=tuple(
                    ChatMessage(m.role, text) for m, text in zip(sample.prompt, prompt, strict=True)
                ),
                chosen=chosen,
                rejected=rejected,
            )
        elif isinstance(sample, TextSample):
            texts, counts = self._redactor.redact_conversation([sample.text])
            sample = replace(sample, text=texts[0])
        else:
            return sample
        self._pii.update(counts)
        return sample

    def _clean(self, sample: Sample) -> Sample | None:
        if isinstance(sample, ChatSample):
            return self._chat(sample)
        if isinstance(sample, PreferenceSample) and self._options.clean:
            return self._preference(sample)
        if isinstance(sample, TextSample) and self._options.clean:
            # Documents keep their layout (quotes, "-- " lines): only the encoding is repaired.
            text = repair_encoding(sample.text)
            if text != sample.text:
                self._cleaner.counts["encoding_repaired"] += 1
            return replace(sample, text=text)
        return sample

    def _chat(self, sample: ChatSample) -> ChatSample | None:
        if self._options.clean:
            sample = self._cleaner.clean(sample)
        if self._options.languages:
            language = conversation_language([(m.role, m.content) for m in sample.messages])
            if language is not None and language not in self._options.languages:
                self._removed["other_language"] += 1
                return None
        if self._options.quality_filters:
            return self._quality.check(sample)
        return sample

    def _preference(self, sample: PreferenceSample) -> PreferenceSample | None:
        clean = self._cleaner.clean_text
        cleaned = replace(
            sample,
            prompt=tuple(ChatMessage(m.role, clean(m.content)) for m in sample.prompt),
            chosen=clean(sample.chosen),
            rejected=clean(sample.rejected),
        )
        texts = [m.content for m in cleaned.prompt] + [cleaned.chosen, cleaned.rejected]
        if any(not text for text in texts):
            self._removed["empty_message"] += 1
            return None
        return cleaned

    def count_removed(self, reason: str, count: int) -> None:
        """Records samples a later, dataset-wide step removed (duplicates)."""
        if count:
            self._removed[reason] += count

    def report(self) -> SanitizationReport:
        """Messages changed by step, samples removed by reason."""
        changed = dict(self._cleaner.counts)
        changed.update({f"pii_{kind.lower()}": count for kind, count in self._pii.items()})
        if self._quality.merged_turns:
            changed["turns_merged"] = self._quality.merged_turns
        removed = Counter(self._removed)
        removed.update(self._quality.removed)
        return SanitizationReport(changed=changed, removed=dict(removed))
