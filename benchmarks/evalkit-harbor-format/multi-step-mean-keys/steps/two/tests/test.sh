#!/usr/bin/env bash
# No "style" key in this step: Harbor's mean counts it as 0 for this step.
if printf 'two\n' | cmp -s - /app/two.txt; then r=0.5; else r=0; fi
printf '{"reward": %s}\n' "$r" > /logs/verifier/reward.json
