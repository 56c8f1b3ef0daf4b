#!/usr/bin/env bash
set -uo pipefail
mkdir -p /logs/verifier
# informational (does not affect the reward): the limits the engine applied,
# expected memory 536870912 bytes and a CPU quota equal to one period
{
  echo "memory_limit_bytes=$(cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || echo unknown)"
  if [ -r /sys/fs/cgroup/cpu.max ]; then
    echo "cpu_max=$(cat /sys/fs/cgroup/cpu.max)"
  else
    echo "cpu_max=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || echo unknown) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us 2>/dev/null || echo unknown)"
  fi
} | tee /logs/verifier/limits.txt
if printf '500500\n' | cmp -s - /app/sum.txt; then
  echo 1 > /logs/verifier/reward.txt
else
  echo 0 > /logs/verifier/reward.txt
fi
