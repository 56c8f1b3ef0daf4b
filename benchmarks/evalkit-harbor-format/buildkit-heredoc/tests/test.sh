#!/usr/bin/env bash
if printf 'written by a heredoc\n' | cmp -s - /app/answer.txt; then echo 1 > /logs/verifier/reward.txt; else echo 0 > /logs/verifier/reward.txt; fi
