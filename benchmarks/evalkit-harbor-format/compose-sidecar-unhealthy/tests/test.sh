#!/usr/bin/env bash
# Would give 1 if it ever ran: Harbor never gets this far (the sidecar never becomes healthy).
echo 1 > /logs/verifier/reward.txt
