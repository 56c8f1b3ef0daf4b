#!/usr/bin/env bash
# The reference solution is deliberately wrong: this step scores 0 < min_reward.
set -euo pipefail
echo wrong > /app/first.txt
