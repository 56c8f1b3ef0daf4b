#!/usr/bin/env bash
# Serve a local model with an OpenAI-compatible API on 127.0.0.1, in the foreground, until Ctrl-C:
#   scripts/serve_local_model.sh [--engine llama_cpp|vllm] [--model PATH] [--port P] [--replicas N]
#                                [--threads T] [--name NAME] [--log-dir DIR] [-- extra server args]
# Default: llama.cpp serving SmolLM2-135M-Instruct (set up by scripts/setup.sh) on a free port. Prints each
# replica's base URL once it answers; Ctrl-C (or SIGTERM) stops every server. Same as `evalkit serve`.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv=${EVALKIT_VENV:-.venv}
case $venv in /*) ;; *) venv="$repo/$venv" ;; esac
evalkit="$venv/bin/evalkit"
[ -x "$evalkit" ] || { echo "serve_local_model: $evalkit not found: run scripts/setup.sh first" >&2; exit 2; }
exec "$evalkit" serve "$@"
