#!/usr/bin/env bash
# Step 1's file survives (one environment), workdir/ landed in the working directory, setup.sh ran once,
# step env is merged over task env, and step 1's tests were removed from /tests.
set -uo pipefail
. /tests/common.sh
if printf 'first\nsecond\n' | cmp -s - /app/notes.txt \
   && printf 'setup-ran\n' | cmp -s - /app/setup.log \
   && [ "${TASK_LEVEL:-}" = from-task ] && [ "${STEP_LEVEL:-}" = from-step ] \
   && [ ! -e /tests/only-in-create.txt ]; then
  write_reward 1
else
  echo "notes='$(cat /app/notes.txt)' setup='$(cat /app/setup.log 2>/dev/null)' TASK_LEVEL='${TASK_LEVEL:-}' STEP_LEVEL='${STEP_LEVEL:-}'"
  ls -la /tests
  write_reward 0
fi
