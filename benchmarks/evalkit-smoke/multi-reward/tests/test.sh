#!/usr/bin/env bash
set -uo pipefail
mkdir -p /logs/verifier
reward=0.0
style=0.5
# $(...) strips a trailing newline, so this accepts "42" and "42\n"
if [ -f /app/answer.txt ] && [ "$(cat /app/answer.txt)" = "42" ]; then reward=1.0; fi
# last byte is a newline?
if [ -s /app/answer.txt ] && [ "$(tail -c 1 /app/answer.txt | od -An -c | tr -d ' ')" = '\n' ]; then style=1.0; fi
printf '{"reward": %s, "style": %s}\n' "$reward" "$style" > /logs/verifier/reward.json
