#!/usr/bin/env bash
# Partial credit: 0.5 for the right file, the other half needs /app/beta-bonus.txt, which the reference
# solution does not write. 0.5 < min_reward, so Harbor stops here.
reward=0
if printf 'beta\n' | cmp -s - /app/beta.txt; then reward=0.5; fi
if [ "$reward" = 0.5 ] && [ -f /app/beta-bonus.txt ]; then reward=1; fi
echo "$reward" > /logs/verifier/reward.txt
