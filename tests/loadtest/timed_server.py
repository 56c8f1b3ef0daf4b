"""A model server on 127.0.0.1 that streams with known timing: the first token after `ttft` seconds, then one
token every `itl` seconds, `tokens` in all — on OpenAI `/v1/chat/completions` and Anthropic `/v1/messages`.

Token k is written at `start + ttft + k·itl` (absolute times, so sleep overshoot does not accumulate). It also
serves vLLM-style `/metrics` (prefix-cache counters it advances per request) and records what it received and
when, so replay tests can compare arrivals with the recording. Used by tests/loadtest and (imported by path,
in its own process) by benchmarks/perf/loadtest.py.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass

import orjson
from aiohttp import web


@dataclass
class Arrival:
    path: str
    body: dict | None
    received: float
    """`time.time()` when the request's body had been read."""
    finished: float = 0.0
    """`time.time()` after its last byte was written."""


class TimedServer:
    def __init__(self, name: str = "timed", *, ttft: float = 0.1, itl: float = 0.02, tokens: int = 20,
                 record: bool = True, cache_hit_share: float = 0.5, slots: int | None = None) -> None:
        self.name, self.ttft, self.itl, self.tokens = name, ttft, itl, tokens
        self.record = record
        """Benchmarks turn this off: bodies are not parsed nor kept."""
        self.cache_hit_share = cache_hit_share
        """Share of each request's prompt tokens reported as prefix-cache hits on /metrics."""
        self.slots = asyncio.Semaphore(slots) if slots else None
        """Requests generated at once (others queue, as on a saturated server)."""
        self.arrivals: list[Arrival] = []
        self.queries = self.hits = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> TimedServer:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, backlog=4096)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        text = (
            "# HELP vllm:prefix_cache_queries Prefix cache queries, in terms of number of queried tokens.\n"
            "# TYPE vllm:prefix_cache_queries counter\n"
            f'vllm:prefix_cache_queries_total{{engine="0",model_name="m"}} {float(self.queries)}\n'
            "# TYPE vllm:prefix_cache_hits counter\n"
            f'vllm:prefix_cache_hits_total{{engine="0",model_name="m"}} {float(self.hits)}\n'
        )
        return web.Response(text=text, content_type="text/plain")

    async def _start(self, request: web.Request) -> tuple[bytes, Arrival, float]:
        start = time.perf_counter()
        raw = await request.read()
        arrival = Arrival(request.path, orjson.loads(raw) if self.record else None, time.time())
        if self.record:
            self.arrivals.append(arrival)
        prompt = len(raw) // 4
        self.queries += prompt
        self.hits += int(prompt * self.cache_hit_share)
        return raw, arrival, start

    async def _write_tokens(self, response: web.StreamResponse, start: float, events: list[bytes]) -> None:
        for k, event in enumerate(events):
            delay = start + self.ttft + k * self.itl - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await response.write(event)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if self.slots is None:
            return await self._chat_now(request)
        async with self.slots:
            return await self._chat_now(request)

    async def _chat_now(self, request: web.Request) -> web.StreamResponse:
        raw, arrival, start = await self._start(request)
        prompt = len(raw) // 4
        usage = {"prompt_tokens": prompt, "completion_tokens": self.tokens, "total_tokens": prompt + self.tokens}
        stream = b'"stream":true' in raw.replace(b" ", b"")
        if not stream:
            await asyncio.sleep(max(0.0, start + self.ttft + (self.tokens - 1) * self.itl - time.perf_counter()))
            message = {"role": "assistant", "content": "tok " * self.tokens}
            body = {"id": f"chatcmpl-{self.name}", "object": "chat.completion", "created": 1, "model": "m",
                    "choices": [{"index": 0, "message": message, "finish_reason": "length"}], "usage": usage}
            arrival.finished = time.time()
            return web.Response(body=orjson.dumps(body), content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        head = b'data: {"id":"chatcmpl-' + self.name.encode() + b'","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":'

        def chunk(delta: bytes, finish: bytes = b"null") -> bytes:
            return head + delta + b',"finish_reason":' + finish + b"}]}\n\n"

        events = [chunk(b'{"role":"assistant","content":"tok "}')]
        events += [chunk(b'{"content":"tok "}') for _ in range(self.tokens - 1)]
        await self._write_tokens(response, start, events)
        tail = chunk(b"{}", b'"length"')
        if b'"include_usage":true' in raw.replace(b" ", b""):
            tail += b'data: {"id":"chatcmpl-x","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":' + orjson.dumps(usage) + b"}\n\n"
        await response.write(tail + b"data: [DONE]\n\n")
        arrival.finished = time.time()
        await response.write_eof()
        return response

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        raw, arrival, start = await self._start(request)
        prompt = len(raw) // 4
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        message = {"id": f"msg_{self.name}", "type": "message", "role": "assistant", "model": "m", "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": prompt, "output_tokens": 1}}
        await response.write(
            b"event: message_start\ndata: " + orjson.dumps({"type": "message_start", "message": message}) + b"\n\n"
            b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
        )
        delta = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"tok "}}\n\n'
        await self._write_tokens(response, start, [delta] * self.tokens)
        end = {"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
               "usage": {"output_tokens": self.tokens}}
        await response.write(
            b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
            b"event: message_delta\ndata: " + orjson.dumps(end) + b"\n\n"
            b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
        )
        arrival.finished = time.time()
        await response.write_eof()
        return response


async def _serve_forever(ttft: float, itl: float, tokens: int) -> None:
    async with TimedServer("bench", ttft=ttft, itl=itl, tokens=tokens, record=False) as server:
        print(server.url, flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":  # python timed_server.py TTFT ITL TOKENS: serve until killed, print the URL
    import uvloop

    uvloop.run(_serve_forever(float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])))
