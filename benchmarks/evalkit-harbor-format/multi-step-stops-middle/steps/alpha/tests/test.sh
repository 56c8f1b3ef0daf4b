#!/usr/bin/env bash
if printf 'alpha\n' | cmp -s - /app/alpha.txt; then echo 1 > /logs/verifier/reward.txt; else echo 0 > /logs/verifier/reward.txt; fi
