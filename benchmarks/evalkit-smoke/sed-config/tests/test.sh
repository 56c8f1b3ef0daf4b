#!/usr/bin/env bash
set -uo pipefail
mkdir -p /logs/verifier
if cmp -s /tests/expected.conf /app/config/server.conf; then
  echo 1 > /logs/verifier/reward.txt
else
  diff /tests/expected.conf /app/config/server.conf
  echo 0 > /logs/verifier/reward.txt
fi
