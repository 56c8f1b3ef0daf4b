#!/usr/bin/env bash
# reward.txt that is not a float: expected RewardParseError
mkdir -p /logs/verifier
echo not-a-number > /logs/verifier/reward.txt
