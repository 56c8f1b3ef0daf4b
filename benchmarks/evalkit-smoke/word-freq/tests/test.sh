#!/usr/bin/env bash
set -uo pipefail
mkdir -p /logs/verifier
# expected answer, computed by hand from corpus.txt ("over" also has 4 but loses the tie to "cat")
expected='14 the
7 dog
6 fox
5 and
4 cat'
if [ -f /app/top5.txt ] && printf '%s\n' "$expected" | cmp -s - /app/top5.txt; then
  echo 1 > /logs/verifier/reward.txt
else
  echo 0 > /logs/verifier/reward.txt
fi
