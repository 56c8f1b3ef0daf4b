#!/usr/bin/env bash
set -euo pipefail
cp /etc/evalkit-heredoc.txt /app/answer.txt
