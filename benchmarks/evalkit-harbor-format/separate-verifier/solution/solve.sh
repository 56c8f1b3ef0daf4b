#!/usr/bin/env bash
set -euo pipefail
echo 42 > /app/result.txt
mkdir -p /app/reports /logs/artifacts
echo ok > /app/reports/summary.txt
echo done > /logs/artifacts/report.txt
# Not declared as an artifact: must not exist where grading happens.
echo leaked > /app/agent-only.txt
