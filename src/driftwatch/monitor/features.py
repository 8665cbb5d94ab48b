"""Features of one inference event, cheap and pure (a few microseconds): what the monitor sketches.

Numeric: prompt and response length in characters and tokens (the server's counts when the event has them,
else an estimate of chars/4), latency, and the response's repeated n-gram ratio (a looping answer is a symptom
of modal collapse). Categorical: status, route, language (declared in metadata, else a script/stop-word guess),
refusal (configurable patterns) and empty response. :func:`distinct_n` is the per-window diversity of responses.
"""

from __future__ import annotations

import re
from typing import Iterable, NamedTuple, Sequence

from driftwatch.config import CATEGORICAL_FEATURES, NUMERIC_FEATURES
from driftwatch.events import InferenceEvent

DEFAULT_REFUSALS = (
    r"\bI(?:'m| am) (?:sorry|afraid),? but\b",
    r"\bI (?:can(?:'|no)t|cannot|won't|am unable to|'m unable to) (?:help|assist|provide|do|answer|comply)",
    r"\bas an AI\b",
    r"\bI'm not able to\b",
)

NUMERIC, CATEGORICAL = NUMERIC_FEATURES, CATEGORICAL_FEATURES  # named in config: the vocabulary rules may use
COLUMNS = NUMERIC + CATEGORICAL  # the order of Features' fields: a Features tuple is a row of these columns

_STOPWORDS = {
    "en": {"the", "and", "is", "of", "to", "what", "you", "in", "it", "for", "how", "this"},
    "es": {"el", "la", "de", "que", "y", "en", "los", "es", "por", "para", "una", "cómo"},
    "fr": {"le", "la", "les", "de", "et", "est", "des", "une", "que", "pour", "dans", "vous"},
    "de": {"der", "die", "das", "und", "ist", "nicht", "ein", "eine", "zu", "mit", "wie", "ich"},
    "pt": {"o", "a", "de", "que", "e", "do", "da", "em", "um", "para", "não", "uma", "como"},
    "it": {"il", "di", "che", "e", "la", "per", "un", "non", "sono", "una", "come", "della"},
}


class Features(NamedTuple):
    prompt_chars: int
    prompt_tokens: int
    response_chars: int
    response_tokens: int
    latency_ms: float
    repeated_ngram_ratio: float
    status: str
    route: str
    language: str
    refusal: str  # "yes" | "no"
    empty_response: str  # "yes" | "no"

    def numeric(self) -> tuple[float, ...]:
        return tuple(getattr(self, name) for name in NUMERIC)

    def categorical(self) -> tuple[str, ...]:
        return tuple(getattr(self, name) for name in CATEGORICAL)


def detect_language(text: str) -> str:
    """A cheap guess: the dominant script, and for Latin script the language whose stop words hit most."""
    sample = text[:300]
    if not sample.isascii():
        scripts = {"cjk": 0, "cyrillic": 0, "arabic": 0, "devanagari": 0, "latin": 0}
        for ch in sample:
            o = ord(ch)
            if o < 0x250:
                scripts["latin"] += ch.isalpha()
            elif 0x400 <= o < 0x530:
                scripts["cyrillic"] += 1
            elif 0x600 <= o < 0x700:
                scripts["arabic"] += 1
            elif 0x900 <= o < 0x980:
                scripts["devanagari"] += 1
            elif 0x3040 <= o < 0xA000 or 0xAC00 <= o < 0xD7B0:
                scripts["cjk"] += 1
        script, hits = max(scripts.items(), key=lambda kv: kv[1])
        if script != "latin" and hits:
            return {"cyrillic": "ru", "arabic": "ar", "devanagari": "hi", "cjk": "cjk"}[script]
    words = set(sample[:160].lower().split())
    if not any(c.isalpha() for c in sample):
        return "unknown"
    best, score = "latin-other", 1
    for lang, stops in _STOPWORDS.items():
        hits = len(words & stops)
        if hits > score:
            best, score = lang, hits
    return best


def repeated_ngram_ratio(text: str, n: int = 3, max_words: int = 400) -> float:
    """Share of the response's word n-grams that repeat an earlier one: 0 for varied text, near 1 for loops."""
    words = text.split(maxsplit=max_words)[:max_words]
    total = len(words) - n + 1
    if total <= 1:
        return 0.0
    grams = zip(words, words[1:], words[2:]) if n == 3 else zip(*(words[i:] for i in range(n)))
    return 1.0 - len(set(grams)) / total


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct-n over a window of responses: unique word n-grams / all word n-grams (0 when there are none)."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        words = text.split()
        for i in range(len(words) - n + 1):
            seen.add(tuple(words[i : i + n]))
            total += 1
    return len(seen) / total if total else 0.0


def prompt_text(event: InferenceEvent) -> str:
    """The prompt as text: the prompt field, else the system and user messages of a chat."""
    if event.prompt is not None:
        return event.prompt
    return "\n".join(m.content for m in event.messages or () if m.role in ("user", "system"))


class FeatureExtractor:
    def __init__(self, refusal_patterns: Sequence[str] = DEFAULT_REFUSALS) -> None:
        try:
            self._refusal = re.compile("|".join(f"(?:{p})" for p in refusal_patterns), re.IGNORECASE) \
                if refusal_patterns else None
        except re.error as exc:
            raise ValueError(f"invalid refusal pattern: {exc}") from None

    def __call__(self, event: InferenceEvent) -> Features:
        prompt = prompt_text(event)
        response = event.response or ""
        declared = event.metadata.get("language") or event.metadata.get("lang")
        language = str(declared).lower()[:16] if declared else detect_language(prompt)
        refusal = self._refusal is not None and self._refusal.search(response, 0, 200) is not None  # refusals lead
        tokens_in, tokens_out = event.tokens_in, event.tokens_out
        return Features(  # positional, in the fields' order (keywords cost a microsecond an event)
            len(prompt),  # prompt_chars
            tokens_in if tokens_in is not None else (len(prompt) + 3) // 4,  # prompt_tokens
            len(response),  # response_chars
            tokens_out if tokens_out is not None else (len(response) + 3) // 4,  # response_tokens
            event.latency_ms,  # latency_ms
            repeated_ngram_ratio(response) if response else 0.0,  # repeated_ngram_ratio
            event.status,  # status
            event.route or "none",  # route
            language,  # language
            "yes" if refusal else "no",  # refusal
            "yes" if event.status == "ok" and not response.strip() else "no",  # empty_response
        )
