"""Evaluation and the vLLM client against real vLLM (CPU build) serving the session's tiny Llama and its adapters:
v-a learned to answer "alpha alpha alpha." to "Say something N", v-b "bravo bravo bravo."."""

import json
import os

import httpx
import pytest

from driftwatch.config import Evaluate
from driftwatch.errors import AdapterExists, AdapterNotFound, AdapterRejected, VLLMUnavailable
from driftwatch.evaluate.evaluator import Evaluator
from driftwatch.serving.vllm import VLLMClient

pytestmark = pytest.mark.integration


@pytest.fixture()
def golden(tmp_path):
    """The task: say alpha. Prompts the adapters were not trained on."""
    path = tmp_path / "golden.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Say something {i}", "expected": "alpha alpha",
                                        "scoring": "contains"}) + "\n" for i in range(100, 110)))
    return path


def test_client_maps_vllm_errors(vllm, tiny_model, tmp_path):
    server, adapters = vllm
    assert os.getpriority(os.PRIO_PROCESS, server.proc.pid) == 10  # the local server yields to a trainer beside it
    with VLLMClient(server.url) as client:
        assert client.health() and {"v-a", "v-b"} <= set(client.adapters())
        assert client.adapters()["v-a"] == str(adapters["v-a"])
        with pytest.raises(AdapterExists, match="v-a"):
            client.load_adapter("v-a", str(adapters["v-a"]))
        with pytest.raises(AdapterNotFound):
            client.load_adapter("v-nowhere", str(tmp_path / "no-such-adapter"))
        with pytest.raises(AdapterNotFound):
            client.unload_adapter("v-never-loaded")
        with pytest.raises(AdapterNotFound, match="v-nope"):
            client.chat("v-nope", [{"role": "user", "content": "hi"}], max_tokens=2)
        # a rank above the server's --max-lora-rank (16): vLLM's 500, named
        from driftwatch.retrain.trainer import TrainSpec, train

        data = tmp_path / "data"
        data.mkdir()
        rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "x"}]}
                for i in range(10)]
        (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:8]))
        (data / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[8:]))
        train(TrainSpec(base_model=str(tiny_model), dataset=str(data), output=str(tmp_path / "wide"), max_steps=1,
                        r=32, alpha=32, progress=False))
        with pytest.raises(AdapterRejected, match="max-lora-rank"):
            client.load_adapter("v-wide", str(tmp_path / "wide" / "adapter"))
        assert client.health() and "v-wide" not in client.adapters()
        # load, serve, unload under a fresh name
        client.load_adapter("v-a2", str(adapters["v-a"]))
        assert "alpha" in client.chat("v-a2", [{"role": "user", "content": "Say something 7"}], max_tokens=8).text
        client.unload_adapter("v-a2")
        assert "v-a2" not in client.adapters()
    with pytest.raises(VLLMUnavailable, match="not reachable"):
        VLLMClient("http://127.0.0.1:9", retries=1, backoff_s=0.01).models()


def test_evaluation_on_vllm_promotes_the_good_and_refuses_the_poisoned(vllm, golden, tmp_path):
    server, _ = vllm
    with VLLMClient(server.url) as client:
        evaluator = Evaluator(Evaluate(max_tokens=12), client, golden, tmp_path / "evals")
        good = evaluator.run("v-a", "v-b", eval_id="good")
        poisoned = evaluator.run("v-b", "v-a", eval_id="poisoned")  # trained on the wrong answers
        missing = evaluator.run("v-gone", "v-a", eval_id="missing")
    assert good.passed, good.table()
    assert good.metrics["v-a"]["golden_score"] == 1.0 and good.metrics["v-b"]["golden_score"] == 0.0
    assert not poisoned.passed and "golden_delta" in {g.name for g in poisoned.gates if not g.passed}
    assert not missing.passed and missing.metrics["v-gone"]["request_errors"] == sum(map(len, evaluator.suites.values()))
    for r in (good, poisoned, missing):
        saved = json.loads((tmp_path / "evals" / f"{r.id}.json").read_text())
        assert saved["passed"] == r.passed and (tmp_path / "evals" / f"{r.id}.txt").exists()
    assert all(0 < good.metrics[a]["latency_p95_ms"] < 5000 for a in ("v-a", "v-b"))


def test_evaluate_command(vllm, golden, tmp_path):
    import subprocess
    import sys

    import yaml

    server, _ = vllm
    cfg = tmp_path / "dw.yaml"
    cfg.write_text(yaml.safe_dump({"daemon": {"state_dir": str(tmp_path / "state")},
                                   "retrain": {"golden_set": str(golden)}, "evaluate": {"max_tokens": 12},
                                   "gateway": {"upstreams": [server.url]}}))

    def evaluate(*args):
        return subprocess.run([sys.executable, "-m", "driftwatch", *args, "-c", str(cfg)], capture_output=True,
                              text=True, timeout=300)

    assert evaluate("alias", "set", "production", "v-a").returncode == 0
    refused = evaluate("evaluate", "v-b")  # against production (v-a): worse on the task
    assert refused.returncode == 1 and "incumbent v-a — FAILED" in refused.stdout
    assert "FAIL golden_delta" in refused.stdout
    promoted = evaluate("evaluate", "v-a", "--incumbent", "v-b")
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    assert "PASSED" in promoted.stdout and len(list((tmp_path / "state" / "evals").glob("*.json"))) == 2


def test_anchors_command_asks_the_served_base_model(vllm, tmp_path):
    """`driftwatch anchors` on vLLM: the base model's answers to the prompts, as base-training-set lines (the tiny
    Llama's random words end a sentence or not: only whole sentences are written)."""
    import subprocess
    import sys

    import yaml

    from driftwatch.retrain.dataset import read_examples

    server, _ = vllm
    cfg, prompts, out = tmp_path / "dw.yaml", tmp_path / "p.jsonl", tmp_path / "anchors.jsonl"
    cfg.write_text(yaml.safe_dump({"gateway": {"upstreams": [server.url]}}))
    asked = [f"Say something {i}" for i in range(12)]
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in asked))
    done = subprocess.run([sys.executable, "-m", "driftwatch", "anchors", "--out", str(out), "--prompts", str(prompts),
                           "--max-tokens", "24", "-c", str(cfg)], capture_output=True, text=True, timeout=300)
    written = read_examples(out) if out.exists() else []
    assert done.returncode == (0 if written else 1), done.stdout + done.stderr
    assert f"{len(written)} of 12 prompts answered in whole sentences by 'base'" in done.stdout
    assert all(e.prompt in asked and e.route == "general" and e.target[-1] in ".!?" for e in written)


TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_training_inputs_are_token_for_token_what_vllm_saw(vllm, tiny_model, tmp_path):
    """Issue 26: the training input of a harvested example is what the server tokenized, checked against vLLM's own
    /tokenize: chat with and without a system prompt and with earlier turns, a completion, and a vLLM started with
    --chat-template (retrain.chat_template)."""
    from driftwatch.dev.localvllm import LocalVLLM
    from driftwatch.events import InferenceEvent
    from driftwatch.retrain.dataset import Example, _line
    from driftwatch.retrain.harvest import served
    from driftwatch.retrain.trainer import load_tokenizer, prompt_ids

    def request(**kw):
        return InferenceEvent.model_validate({"schema_version": 1, "request_id": "r", "timestamp": 1795514400000,
                                              "model": "base", "adapter": "base", "latency_ms": 1.0, "status": "ok",
                                              **kw})

    requests = [  # as the gateway logs them: a chat's system and user text is its `prompt` too
        request(prompt="Say something 3", messages=[{"role": "user", "content": "Say something 3"}]),
        request(prompt="Be brief.\nHi there\nAnd now?",
                messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                          {"role": "assistant", "content": "alpha alpha."}, {"role": "user", "content": "And now?"}]),
        request(prompt="Q: what comes after alpha?\nA:"),
    ]

    def check(url, tokenizer, chats_only=False):
        for r in requests:
            line = json.loads(_line(Example("text", "bravo.", "correction", None, None, "r", served(r))))
            if "prompt" in line:
                if chats_only:
                    continue
                body = {"model": "base", "prompt": line["prompt"]}
            else:
                body = {"model": "base", "messages": line["messages"][:-1], "add_generation_prompt": True}
            answer = httpx.post(f"{url}/tokenize", json=body, timeout=30)
            assert answer.status_code == 200, answer.text
            assert prompt_ids(tokenizer, line) == answer.json()["tokens"], body

    server, _ = vllm
    check(server.url, load_tokenizer(tiny_model))
    template = tmp_path / "template.jinja"
    template.write_text(TEMPLATE)
    custom = LocalVLLM(tiny_model, chat_template=template, max_loras=1).start()
    try:
        check(custom.url, load_tokenizer(tiny_model, str(template)), chats_only=True)
        with pytest.raises(AssertionError):  # the base model's own template is not what this server renders
            check(custom.url, load_tokenizer(tiny_model), chats_only=True)
    finally:
        custom.stop()


def test_an_interpolated_candidate_is_served_by_vllm_as_the_sum_it_is_and_a_review_runs_there(vllm, tiny_model,
                                                                                              golden, tmp_path):
    """Issue 26: peft's concatenated-rank interpolation is a LoRA vLLM serves, and it is exactly the sum: at α 1 it
    answers as the adapter it interpolates from, at α 0 as the one it goes toward (greedy, token for token); the
    review asks every candidate and the incumbent together on the real server."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from driftwatch.retrain.trainer import interpolate

    server, adapters = vllm
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(adapters["v-a"]))
    made = {alpha: interpolate(model, adapters["v-a"], str(adapters["v-b"]), alpha, tmp_path / "mix",
                               f"m{round(alpha * 100)}", max_rank=16) for alpha in (1.0, 0.0, 0.5)}
    assert all(m["exact"] and m["rank"] == 16 for m in made.values())
    with VLLMClient(server.url) as client:
        for alpha in made:
            client.load_adapter(f"v-mix-{alpha:g}", str(tmp_path / "mix" / f"m{round(alpha * 100)}"))
        try:
            def say(name, i):
                return client.chat(name, [{"role": "user", "content": f"Say something {i}"}], max_tokens=8).text

            for i in (100, 101, 102):
                assert say("v-mix-1", i) == say("v-a", i) and say("v-mix-0", i) == say("v-b", i)
            report = Evaluator(Evaluate(max_tokens=12, concurrency=4), client, golden, tmp_path / "evals").run(
                "v-a", "v-b", siblings=("v-mix-0.5", "v-mix-0"))
            review = report.context["review"]
            assert [c["candidate"] for c in review["candidates"]] == ["v-a", "v-mix-0.5", "v-mix-0"]
            assert report.metrics[report.candidate]["request_errors"] == 0 and report.error is None
            scores = {c["candidate"]: c["golden_score"] for c in review["candidates"]}
            assert scores["v-a"] == 1.0 and scores["v-mix-0"] == 0.0 and report.candidate != "v-mix-0"
        finally:
            for alpha in made:
                client.unload_adapter(f"v-mix-{alpha:g}")
