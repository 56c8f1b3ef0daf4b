#!/usr/bin/env bash
set -euo pipefail
# deliberately wrong answer: expected outcome is reward 0.0 and no error
echo 41 > /app/answer.txt
