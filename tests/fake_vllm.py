"""A stand-in for `vllm serve` (a GPU server cannot run here): the same command line, the OpenAI wire protocol.

Installed by the tests as an executable named `vllm` on PATH. It prints its argv and CUDA_VISIBLE_DEVICES (to
the log evalkit gives it), starts one worker process like vLLM's engine core, and serves `/v1/models` and
`/v1/chat/completions` (JSON or SSE) on 127.0.0.1. Behaviour switches come from the environment, which
evalkit passes to vLLM unchanged: FAKE_VLLM_EXIT=<code> exits during start-up, FAKE_VLLM_SILENT=1 never
listens, FAKE_VLLM_IGNORE_TERM=1 ignores SIGTERM (leader and worker).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("model")
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    args, _ = parser.parse_known_args()
    print("argv", json.dumps(sys.argv[1:]), flush=True)
    print("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"), flush=True)
    if os.environ.get("FAKE_VLLM_IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    worker = subprocess.Popen([sys.executable, "-c", "import time, signal, os\n"
                               "if os.environ.get('FAKE_VLLM_IGNORE_TERM'): signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                               "time.sleep(3600)"])
    print("worker", worker.pid, flush=True)
    if code := os.environ.get("FAKE_VLLM_EXIT"):
        print("RuntimeError: CUDA error: no CUDA-capable device is detected", flush=True)
        sys.exit(int(code))
    if os.environ.get("FAKE_VLLM_SILENT"):
        time.sleep(3600)
    Handler.model = args.served_model_name
    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


class Handler(BaseHTTPRequestHandler):
    model = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        print(format % args, flush=True)

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "vllm"}]})
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions" or body.get("model") != self.model:
            self._json(404, {"error": {"message": f"no model {body.get('model')!r} at {self.path}"}})
            return
        text = f"fake vllm on port {self.server.server_address[1]}"
        usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
        base = {"id": "chatcmpl-1", "created": int(time.time()), "model": self.model}
        if not body.get("stream"):
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            self._json(200, {**base, "object": "chat.completion", "choices": [choice], "usage": usage})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for i, word in enumerate(text.split(" ")):
            delta = {"role": "assistant", "content": word} if i == 0 else {"content": " " + word}
            chunk = {**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        last = {"index": 0, "delta": {}, "finish_reason": "stop"}
        self.wfile.write(f"data: {json.dumps({**base, 'object': 'chat.completion.chunk', 'choices': [last]})}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.close_connection = True


if __name__ == "__main__":
    main()
