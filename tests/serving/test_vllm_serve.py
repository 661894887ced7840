"""`pvm-qwen3vl serve CHECKPOINT` starts vLLM's OpenAI-compatible server (from .venv-vllm, with no
--trust-remote-code); an OpenAI-style chat request with an image gets the answer transformers `generate` gives."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from pvm_qwen3vl.serving import parity

pytestmark = pytest.mark.vllm

STARTUP_TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(vllm_python, pvm_checkpoint, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    command = [
        sys.executable, "-m", "pvm_qwen3vl.cli", "serve", pvm_checkpoint,
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "1024",
        "--kv-cache-memory-bytes", str(64 << 20), "--limit-mm-per-prompt", '{"image": 2, "video": 0}',
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()[-6000:]}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f"the server did not start in {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-6000:]}")
                time.sleep(2)
        yield base, log
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_chat_request_with_an_image_gets_the_transformers_answer(server, pvm_checkpoint):
    base, log = server
    image = parity.test_image(1, 96, 96)
    question = "Describe the picture."
    reply = _post(
        base + "/v1/chat/completions",
        {
            "model": pvm_checkpoint,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": _data_url(image)}},
                        {"type": "text", "text": question},
                    ],
                }
            ],
            "temperature": 0.0,
            "max_tokens": 24,
        },
    )
    answer = reply["choices"][0]["message"]["content"]

    from transformers import AutoProcessor

    request = parity.Request([parity._user(("image",), question)], [image], max_tokens=24)
    case = parity.Case("served", [request])
    expected = parity.run_transformers(pvm_checkpoint, [case])["served"][0]
    processor = AutoProcessor.from_pretrained(pvm_checkpoint, trust_remote_code=True)
    expected_text = processor.tokenizer.decode(expected["tokens"], skip_special_tokens=True)
    print(f"server: {answer!r}\ntransformers: {expected_text!r}")
    assert reply["usage"]["completion_tokens"] == len(expected["tokens"])
    assert answer == expected_text
    assert "Resolved architecture: PVMQwen3VLForConditionalGeneration" in log.read_text()  # vLLM picked our class
