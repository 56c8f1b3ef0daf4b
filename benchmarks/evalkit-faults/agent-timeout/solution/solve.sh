#!/usr/bin/env bash
set -euo pipefail
# write the correct answer, then hang past [agent] timeout_sec = 2:
# expected AgentTimeoutError, and the verifier still runs and gives reward 1.0
echo 42 > /app/answer.txt
sleep 600
