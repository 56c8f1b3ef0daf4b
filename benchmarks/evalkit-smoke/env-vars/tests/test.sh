#!/usr/bin/env bash
set -uo pipefail
mkdir -p /logs/verifier
# EXPECTED comes from [verifier.env]; GREETING from [environment.env] must be visible here too
if [ "${EXPECTED:-}" = "bonjour monde!" ] && [ "${GREETING:-}" = "bonjour" ] \
   && printf '%s\n' "$EXPECTED" | cmp -s - /app/greeting.txt; then
  echo 1 > /logs/verifier/reward.txt
else
  echo "EXPECTED='${EXPECTED:-}' GREETING='${GREETING:-}' file='$(cat /app/greeting.txt 2>/dev/null)'"
  echo 0 > /logs/verifier/reward.txt
fi
