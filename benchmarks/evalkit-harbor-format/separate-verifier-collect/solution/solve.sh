#!/usr/bin/env bash
set -euo pipefail
echo counter=3 > /app/state.txt
echo leaked > /app/agent-only.txt
