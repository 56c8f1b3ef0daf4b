#!/usr/bin/env bash
set -euo pipefail
awk '{ s += $1 } END { print s }' /app/numbers.txt > /app/sum.txt
