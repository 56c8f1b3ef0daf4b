#!/usr/bin/env bash
# Runs in the verifier's own container: 1 only if the declared artifacts and /logs/artifacts arrived, and
# nothing else of the agent's container (its files, its image, /solution) is here.
set -uo pipefail
fail() { echo "FAIL: $*"; echo 0 > /logs/verifier/reward.txt; exit 0; }
[ -f /etc/evalkit-verifier-image ] || fail "not running in the image built from tests/Dockerfile"
[ ! -e /etc/evalkit-agent-image ] || fail "running in the agent's image"
[ "${GRADER_MODE:-}" = separate ] || fail "[verifier.environment.env] not applied (GRADER_MODE='${GRADER_MODE:-}')"
printf '42\n' | cmp -s - /app/result.txt || fail "/app/result.txt missing or wrong"
printf 'ok\n' | cmp -s - /app/reports/summary.txt || fail "/app/reports/summary.txt missing or wrong"
printf 'done\n' | cmp -s - /logs/artifacts/report.txt || fail "/logs/artifacts/report.txt missing or wrong"
[ ! -e /app/agent-only.txt ] || fail "an undeclared agent file leaked into grading"
[ ! -e /solution ] || fail "/solution leaked into grading"
echo 1 > /logs/verifier/reward.txt
