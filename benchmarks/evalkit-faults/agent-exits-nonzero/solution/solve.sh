#!/usr/bin/env bash
# write the correct answer, then fail: expected AgentExitError, verifier still runs, reward 1.0
echo 42 > /app/answer.txt
exit 3
