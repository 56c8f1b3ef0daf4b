#!/usr/bin/env bash
# base_generation reports which base image the task image was built from.
set -uo pipefail
generation=$(tr -dc 0-9 < /etc/evalkit-base-generation)
reward=0
if cmp -s /etc/evalkit-base-generation /app/generation.txt; then reward=1; fi
printf '{"reward": %s, "base_generation": %s}\n' "$reward" "${generation:-0}" > /logs/verifier/reward.json
