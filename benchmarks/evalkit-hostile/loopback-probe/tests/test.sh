#!/usr/bin/env bash
if grep -qx "tried=[0-9]* reached=0" /app/probe.txt; then echo 1; else echo 0; fi > /logs/verifier/reward.txt
