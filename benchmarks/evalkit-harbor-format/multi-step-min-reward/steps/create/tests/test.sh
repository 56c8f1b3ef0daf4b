#!/usr/bin/env bash
set -uo pipefail
. /tests/common.sh
if printf 'first\n' | cmp -s - /app/notes.txt && [ "${TASK_LEVEL:-}" = from-task ] \
   && [ -f /tests/only-in-create.txt ]; then
  write_reward 1
else
  write_reward 0
fi
