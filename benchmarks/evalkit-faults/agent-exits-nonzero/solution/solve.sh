#!/usr/bin/env bash
# write the correct answer, then fail: as in Harbor, the oracle's exit code is recorded (3) but is no error;
# the verifier runs, reward 1.0 (tests/harbor/test_agents.py covers AgentExitError for a real agent)
echo 42 > /app/answer.txt
exit 3
