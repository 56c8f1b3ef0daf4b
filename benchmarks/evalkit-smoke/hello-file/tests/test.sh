#!/usr/bin/env bash
set -uo pipefail
mkdir -p /logs/verifier
if printf 'Hello, evalkit!\n' | cmp -s - /app/hello.txt; then
  echo 1 > /logs/verifier/reward.txt
else
  echo 0 > /logs/verifier/reward.txt
fi
