import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny Llama (~3.3M parameters, ChatML) built in the session: no model hub involved."""
    pytest.importorskip("transformers", reason="the train extra is part of the test environment (driftwatch[test])")
    from driftwatch.dev.models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
