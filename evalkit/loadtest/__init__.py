"""`evalkit loadtest`: synthetic and replayed agent traffic against OpenAI/Anthropic-compatible endpoints.

`run_loadtest(config)` runs a sweep and writes `loadtest.json` (a `LoadTestReport`) and `loadtest.png`;
`load_loadtest_config(path, overrides)` reads the YAML. Importing this package is cheap (no aiohttp, no
matplotlib until a test runs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evalkit.loadtest.config import LoadTestConfig, load_loadtest_config
    from evalkit.loadtest.report import LoadTestReport
    from evalkit.loadtest.runner import run_loadtest

__all__ = ["LoadTestConfig", "LoadTestReport", "load_loadtest_config", "run_loadtest"]
_WHERE = {
    "LoadTestConfig": "evalkit.loadtest.config",
    "load_loadtest_config": "evalkit.loadtest.config",
    "LoadTestReport": "evalkit.loadtest.report",
    "run_loadtest": "evalkit.loadtest.runner",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'evalkit.loadtest' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_WHERE[name]), name)
