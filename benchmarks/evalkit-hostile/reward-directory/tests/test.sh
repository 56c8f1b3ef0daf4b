#!/usr/bin/env bash
mkdir /logs/verifier/reward.json
