#!/usr/bin/env bash
set -uo pipefail
mkdir -p /logs/verifier
ok=1
for i in 1 2; do
  # output order is unspecified, so sort before comparing
  if ! awk -f /app/sum.awk "/tests/input$i.csv" | LC_ALL=C sort | cmp -s - "/tests/expected$i.txt"; then
    echo "case $i failed"; ok=0
  fi
done
if [ "$ok" = 1 ]; then echo 1 > /logs/verifier/reward.txt; else echo 0 > /logs/verifier/reward.txt; fi
