#!/usr/bin/env bash
# Would give 1 if it ran: Harbor does not run the verifier after the oracle fails to find solve.sh.
echo 1 > /logs/verifier/reward.txt
