#!/usr/bin/env bash
set -euo pipefail
cat /tmp/hc-count > /app/checks-before-agent.txt
