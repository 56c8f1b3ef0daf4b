#!/usr/bin/env bash
if printf 'one\n' | cmp -s - /app/one.txt; then r=1; else r=0; fi
printf '{"reward": %s, "style": 0.5}\n' "$r" > /logs/verifier/reward.json
