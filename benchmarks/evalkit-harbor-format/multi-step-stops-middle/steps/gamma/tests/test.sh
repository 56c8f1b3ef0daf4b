#!/usr/bin/env bash
if printf 'gamma\n' | cmp -s - /app/gamma.txt; then echo 1 > /logs/verifier/reward.txt; else echo 0 > /logs/verifier/reward.txt; fi
