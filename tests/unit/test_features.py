import pytest

from driftwatch.events import InferenceEvent
from driftwatch.monitor.features import (CATEGORICAL, NUMERIC, FeatureExtractor, detect_language, distinct_n,
                                         repeated_ngram_ratio)

BASE = {"schema_version": 1, "request_id": "r", "timestamp": 1795514400000, "model": "m", "adapter": "a",
        "latency_ms": 420.0, "status": "ok"}


def event(**kw):
    return InferenceEvent.model_validate({**BASE, **kw})


def test_lengths_use_server_tokens_when_present_else_estimate():
    f = FeatureExtractor()(event(prompt="x" * 40, response="y" * 10, tokens_in=7))
    assert (f.prompt_chars, f.prompt_tokens, f.response_chars, f.response_tokens) == (40, 7, 10, 3)
    assert f.latency_ms == 420.0 and len(f.numeric()) == len(NUMERIC) and len(f.categorical()) == len(CATEGORICAL)


def test_chat_prompt_is_the_user_and_system_text():
    f = FeatureExtractor()(event(messages=[{"role": "system", "content": "Be brief."},
                                           {"role": "assistant", "content": "earlier answer " * 50},
                                           {"role": "user", "content": "What is the capital of France?"}]))
    assert f.prompt_chars == len("Be brief.\nWhat is the capital of France?")


@pytest.mark.parametrize("response, refusal", [
    ("I'm sorry, but I can't help with that request.", "yes"),
    ("I cannot provide medical advice.", "yes"),
    ("As an AI, I do not have opinions.", "yes"),
    ("Paris is the capital of France.", "no"),
    ("Sorry for the delay: your order shipped.", "no"),
])
def test_refusals(response, refusal):
    assert FeatureExtractor()(event(prompt="q", response=response)).refusal == refusal


def test_custom_refusal_patterns_and_bad_pattern():
    fx = FeatureExtractor([r"\bno puedo\b"])
    assert fx(event(prompt="q", response="Lo siento, no puedo ayudar")).refusal == "yes"
    with pytest.raises(ValueError, match="invalid refusal pattern"):
        FeatureExtractor(["(unclosed"])


def test_empty_response_only_counts_for_ok_requests():
    fx = FeatureExtractor()
    assert fx(event(prompt="q", response="   ")).empty_response == "yes"
    assert fx(event(prompt="q", status="error", error_type="upstream_5xx")).empty_response == "no"


@pytest.mark.parametrize("text, lang", [
    ("What is the capital of France and how big is it?", "en"),
    ("¿Cuál es la capital de Francia y cómo es el clima en la ciudad?", "es"),
    ("Quelle est la capitale de la France et comment est le climat dans la ville ?", "fr"),
    ("Wie ist das Wetter in der Stadt und ist die Hauptstadt groß?", "de"),
    ("Какая столица Франции?", "ru"),
    ("法国的首都是哪里？", "cjk"),
    ("12345 67890", "unknown"),
])
def test_language_guess(text, lang):
    assert detect_language(text) == lang


def test_declared_language_wins():
    assert FeatureExtractor()(event(prompt="What is this?", metadata={"language": "DE"})).language == "de"


def test_repetition_and_diversity():
    assert repeated_ngram_ratio("the cat sat on the mat today") == 0.0
    assert repeated_ngram_ratio("go go go go go go go go go go") > 0.8
    varied = ["the cat sat", "a dog ran far", "birds fly south in winter"]
    collapsed = ["I am happy to help"] * 3
    assert distinct_n(varied, 1) == 1.0 and distinct_n(collapsed, 2) == pytest.approx(4 / 12)
    assert distinct_n([], 2) == 0.0
