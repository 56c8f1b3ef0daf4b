#!/usr/bin/env bash
# A fresh container of the task's image: the collect hook's snapshot is here, the agent's files are not.
set -uo pipefail
fail() { echo "FAIL: $*"; echo 0 > /logs/verifier/reward.txt; exit 0; }
[ -f /etc/evalkit-agent-image ] || fail "not the task image"
printf 'counter=3\n' | cmp -s - /logs/artifacts/state-snapshot.txt || fail "collect hook snapshot missing or wrong"
[ ! -e /app/state.txt ] || fail "the agent's container was reused for grading"
[ ! -e /app/agent-only.txt ] || fail "an agent file leaked into grading"
echo 1 > /logs/verifier/reward.txt
