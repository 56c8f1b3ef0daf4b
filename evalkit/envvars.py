"""`${VAR}` / `${VAR:-default}` interpolation, shared by config.yaml and task.toml env tables."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def referenced_names(text: str) -> list[str]:
    """The variables `text` refers to, in order."""
    return [match.group(1) for match in _ENV_REF.finditer(text)]


def expand_env_vars(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Expand references from `environ` (default: the process environment); a variable that is unset and
    has no default raises KeyError(name), so callers can say which field needs it."""
    env = os.environ if environ is None else environ

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise KeyError(name)

    return _ENV_REF.sub(replace, text)
