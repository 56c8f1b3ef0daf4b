"""The prefix-cache hit rate a vLLM server reports on `/metrics` (Prometheus text), read before and after a step.

vLLM V1 exposes counters `vllm:prefix_cache_queries` and `vllm:prefix_cache_hits` (in tokens, `_total` in the
text format); older servers a gauge `vllm:gpu_prefix_cache_hit_rate`. A server without them (llama.cpp, a
proxy) gives no figure, never an error. Only `<endpoint root>/metrics` of an address the user gave is read.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp

SCRAPE_TIMEOUT_SEC = 5.0
_NAMES = {
    "vllm:prefix_cache_hits": "hits",
    "vllm:prefix_cache_hits_total": "hits",
    "vllm:prefix_cache_queries": "queries",
    "vllm:prefix_cache_queries_total": "queries",
    "vllm:gpu_prefix_cache_hit_rate": "rate",
}


@dataclass(frozen=True, slots=True)
class CacheCounters:
    hits: float | None
    queries: float | None
    rate: float | None
    """The older gauge (0–1), when that is all the server has."""


def parse_metrics(text: str) -> CacheCounters | None:
    """Sum each metric over its label sets; None when the text has none of them."""
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if (key := _NAMES.get(name)) is None:
            continue
        rest = line.rsplit("}", 1)[1].split() if "}" in line else line.split()[1:]
        try:
            value = float(rest[0])  # a timestamp may follow the value
        except (ValueError, IndexError):
            continue
        sums[key] = sums.get(key, 0.0) + value
    if not sums:
        return None
    return CacheCounters(sums.get("hits"), sums.get("queries"), sums.get("rate"))


async def scrape(session: aiohttp.ClientSession, root: str) -> CacheCounters | None:
    try:
        async with asyncio.timeout(SCRAPE_TIMEOUT_SEC):
            async with session.get(root + "/metrics", allow_redirects=False) as response:
                if response.status != 200:
                    return None
                return parse_metrics(await response.text(errors="replace"))
    except (aiohttp.ClientError, TimeoutError, UnicodeError):
        return None


def hit_rate(pairs: list[tuple[CacheCounters | None, CacheCounters | None]]) -> float | None:
    """Hits over queries during a step, over one replica or several (the mean of the gauges where there are
    no counters); None when no server reported either."""
    hits = queries = 0.0
    gauges = []
    for before, after in pairs:
        if before is None or after is None:
            continue
        if None not in (before.hits, before.queries, after.hits, after.queries):
            hits += after.hits - before.hits  # type: ignore[operator]
            queries += after.queries - before.queries  # type: ignore[operator]
        elif after.rate is not None:
            gauges.append(after.rate)
    if queries > 0:
        return hits / queries
    return sum(gauges) / len(gauges) if gauges else None
