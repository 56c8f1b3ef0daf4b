#!/usr/bin/env bash
if printf 'second\n' | cmp -s - /app/second.txt; then echo 1 > /logs/verifier/reward.txt; else echo 0 > /logs/verifier/reward.txt; fi
