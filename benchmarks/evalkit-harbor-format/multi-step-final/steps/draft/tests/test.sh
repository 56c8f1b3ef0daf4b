#!/usr/bin/env bash
if printf 'draft\n' | cmp -s - /app/draft.txt; then echo 0.25 > /logs/verifier/reward.txt; else echo 0 > /logs/verifier/reward.txt; fi
