#!/usr/bin/env bash
set -uo pipefail
mkdir -p /logs/verifier
# informational (does not affect the reward): the limits the engine applied
{
  echo "memory_limit_bytes=$(cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || echo unknown)"
  echo "interfaces=$(ls -1 /sys/class/net | LC_ALL=C sort | paste -sd, -)"
} | tee /logs/verifier/limits.txt
# allow_internet = false means no network: only the loopback interface may exist
if [ "$(ls -1 /sys/class/net)" = "lo" ] \
   && printf 'delta\ncharlie\nbravo\nalpha\n' | cmp -s - /app/reversed.txt; then
  echo 1 > /logs/verifier/reward.txt
else
  echo 0 > /logs/verifier/reward.txt
fi
