#!/usr/bin/env bash
# reward.txt exists but is empty (0 bytes): expected RewardFileEmptyError
mkdir -p /logs/verifier
: > /logs/verifier/reward.txt
