#!/usr/bin/env bash
# The task-level test: step `publish` has no tests/ of its own, so Harbor runs this one for it.
if printf 'publish\n' | cmp -s - /app/publish.txt; then echo 1 > /logs/verifier/reward.txt; else echo 0 > /logs/verifier/reward.txt; fi
