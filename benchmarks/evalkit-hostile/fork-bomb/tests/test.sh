#!/usr/bin/env bash
n=0; for p in /proc/[0-9]*; do n=$((n + 1)); done
echo "processes=$n" > /logs/verifier/processes.txt
if [ "$n" -lt 20 ]; then echo 1; else echo 0; fi > /logs/verifier/reward.txt
