#!/usr/bin/env bash
set -uo pipefail
mkdir -p /logs/verifier
# with network_mode = "no-network" the container has only the loopback interface;
# anything else (eth0, ...) means the engine did not isolate the container
now=$(ls -1 /sys/class/net | LC_ALL=C sort)
echo "interfaces now: $now"
if [ "$now" = "lo" ] && printf 'lo\n' | cmp -s - /app/interfaces.txt; then
  echo 1 > /logs/verifier/reward.txt
else
  echo 0 > /logs/verifier/reward.txt
fi
