#!/usr/bin/env bash
if printf 'first\n' | cmp -s - /app/first.txt; then echo 1 > /logs/verifier/reward.txt; else echo 0 > /logs/verifier/reward.txt; fi
