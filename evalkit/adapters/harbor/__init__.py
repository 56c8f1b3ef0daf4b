"""Harbor's registry and task formats: which tasks a job runs, fetched and cached on local disk.

    config.py    the `dataset:` block (DatasetConfig, TaskSpec)
    registry.py  registry.json from a file or URL; dataset and version lookup
    local.py     local task directories
    git.py       git plumbing on one bare, blobless cache repository per remote
    cache.py     the shared on-disk task cache: locks, layout, atomic checkouts
    resolve.py   resolve_tasks(): source → selection → checkouts → tasks.lock.json
    cli.py       `evalkit datasets list | show`
"""

from evalkit.adapters.harbor.config import DatasetConfig, TaskSpec
from evalkit.adapters.harbor.registry import Dataset, Registry, load_registry
from evalkit.adapters.harbor.resolve import TaskRef, resolve_tasks

__all__ = ["Dataset", "DatasetConfig", "Registry", "TaskRef", "TaskSpec", "load_registry", "resolve_tasks"]
