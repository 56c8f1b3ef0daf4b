"""Evaluation inside a training loop: `BenchmarkEvaluator` and the `EvalStore` (SQLite) the dashboard's Training
runs page reads."""

from evalkit.training.evaluator import Benchmark, BenchmarkEvaluator
from evalkit.training.store import EvalRecord, EvalStore, Rollout, SQLiteStore

__all__ = ["Benchmark", "BenchmarkEvaluator", "EvalRecord", "EvalStore", "Rollout", "SQLiteStore"]
