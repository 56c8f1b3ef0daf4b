#!/usr/bin/env bash
set -euo pipefail
# GREETING and PUNCT come from [environment.env], NAME from [solution.env]
printf '%s %s%s\n' "$GREETING" "$NAME" "$PUNCT" > /app/greeting.txt
