"""Locust load test for labgate: chat, streaming and a mix of models.

    pip install locust      # in its own virtualenv: it brings gevent
    LABGATE_MODELS=default,coder LABGATE_API_KEY=sk-... \\
        locust -f deploy/locust/locustfile.py --host http://127.0.0.1:4000
    # headless: add --headless -u 16 -r 4 -t 60s --only-summary

Tasks (weights): a whole chat completion (3), a streamed one (2), and an embedding when
``LABGATE_EMBED_MODEL`` is set (1). Each request picks a model from ``LABGATE_MODELS``
(comma-separated; default ``default``). Streams also report their time to first token as
a separate entry (``POST first-token``), so Locust's table shows both. A response whose
status is not 2xx, or a stream without ``[DONE]``, counts as a failure.
"""

from __future__ import annotations

import os
import random
import time

from locust import HttpUser, between, task

MODELS = [m.strip() for m in os.environ.get("LABGATE_MODELS", "default").split(",") if m.strip()]
EMBED_MODEL = os.environ.get("LABGATE_EMBED_MODEL")
KEY = os.environ.get("LABGATE_API_KEY")
MAX_TOKENS = int(os.environ.get("LABGATE_MAX_TOKENS", "64"))
PROMPTS = ["Say hello in five words.", "Name three primary colours.", "What is 12 times 12?",
           "Write a haiku about the sea.", "Give one tip for writing clear code."]


class LabgateUser(HttpUser):
    wait_time = between(0.0, 0.2)

    def on_start(self) -> None:
        if KEY:
            self.client.headers["authorization"] = f"Bearer {KEY}"

    def _body(self, stream: bool) -> dict[str, object]:
        return {"model": random.choice(MODELS), "max_tokens": MAX_TOKENS, "stream": stream,
                "messages": [{"role": "user", "content": random.choice(PROMPTS)}]}

    @task(3)
    def chat(self) -> None:
        with self.client.post("/v1/chat/completions", json=self._body(False), name="chat",
                              catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {resp.text[:200]}")
            elif "choices" not in resp.json():
                resp.failure("no choices in the answer")

    @task(2)
    def stream(self) -> None:
        start = time.perf_counter()
        first = None
        with self.client.post("/v1/chat/completions", json=self._body(True), name="chat stream", stream=True,
                              catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}")
                return
            done = False
            for line in resp.iter_lines():
                if line.startswith(b"data: [DONE]"):
                    done = True
                elif first is None and line.startswith(b"data:") and b'"content":"' in line:
                    first = time.perf_counter()
            if not done:
                resp.failure("the stream ended without [DONE]")
        if first is not None:
            self.environment.events.request.fire(
                request_type="POST", name="first-token", response_time=(first - start) * 1000,
                response_length=0, exception=None, context={})

    @task(1)
    def embed(self) -> None:
        if not EMBED_MODEL:
            return
        with self.client.post("/v1/embeddings", json={"model": EMBED_MODEL, "input": random.choice(PROMPTS)},
                              name="embeddings", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}")
