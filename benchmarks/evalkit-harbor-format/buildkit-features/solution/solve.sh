#!/usr/bin/env bash
set -euo pipefail
greet > /app/greeting.txt
