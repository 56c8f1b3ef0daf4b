#!/usr/bin/env bash
# 1 when the agent's token matches what the sidecar (reached by service name) answers now, and the
# sidecar's write to the shared named volume is visible in main.
set -uo pipefail
reply=""
if exec 3<>/dev/tcp/sidecar/47231; then
  printf 'token\n' >&3
  IFS= read -r reply <&3
fi
echo "sidecar says '$reply'; agent wrote '$(cat /app/token.txt 2>/dev/null)'; volume has '$(cat /shared/sidecar-started 2>/dev/null)'"
if [ "$reply" = "harbor-sidecar-7f3a" ] \
   && printf '%s\n' "$reply" | cmp -s - /app/token.txt \
   && printf '%s\n' "$reply" | cmp -s - /shared/sidecar-started; then
  echo 1 > /logs/verifier/reward.txt
else
  echo 0 > /logs/verifier/reward.txt
fi
