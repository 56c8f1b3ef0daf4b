#!/usr/bin/env bash
# Would give 1 if it ever ran: Harbor stops at the healthcheck, so no agent and no verifier run.
echo 1 > /logs/verifier/reward.txt
