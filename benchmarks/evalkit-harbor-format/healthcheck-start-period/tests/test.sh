#!/usr/bin/env bash
# reward 1 when the healthcheck ran exactly 4 times before the agent and not once after.
set -uo pipefail
before=$(tr -dc 0-9 < /app/checks-before-agent.txt 2>/dev/null)
now=$(tr -dc 0-9 < /tmp/hc-count 2>/dev/null)
before=${before:-0}
now=${now:-0}
reward=0
if [ "$before" = 4 ] && [ "$now" = 4 ]; then reward=1; fi
printf '{"reward": %s, "checks_before_agent": %s, "checks_before_verifier": %s}\n' \
  "$reward" "$before" "$now" > /logs/verifier/reward.json
