#!/usr/bin/env bash
if printf 'ok\n' | cmp -s - /app/answer.txt; then echo 1 > /logs/verifier/reward.txt; else echo 0 > /logs/verifier/reward.txt; fi
