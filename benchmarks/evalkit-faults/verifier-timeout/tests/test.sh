#!/usr/bin/env bash
# hangs past [verifier] timeout_sec = 2 without writing a reward: expected VerifierTimeoutError, no rewards
sleep 600
