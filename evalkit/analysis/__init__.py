"""Post-eval analysis of job directories (files only; never imports the engine's job or trial modules).

Public names: `analyze_job`, `AnalysisConfig`, `compare_jobs`, `export_job`, `create_archive`,
`status_snapshot`, `clean_outputs`. They load lazily, so `evalkit.analysis.reader` alone stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "analyze_job": "evalkit.analysis.analyze",
    "AnalysisConfig": "evalkit.analysis.analyze",
    "AnalysisResult": "evalkit.analysis.analyze",
    "compare_jobs": "evalkit.analysis.compare",
    "export_job": "evalkit.analysis.export",
    "create_archive": "evalkit.analysis.archives",
    "status_snapshot": "evalkit.analysis.archives",
    "clean_outputs": "evalkit.analysis.archives",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'evalkit.analysis' has no attribute {name!r}")
