#!/usr/bin/env bash
set -uo pipefail
if printf 'pong from the entrypoint'"'"'s service\n' | cmp -s - /app/reply.txt; then
  echo 1 > /logs/verifier/reward.txt
else
  echo 0 > /logs/verifier/reward.txt
fi
