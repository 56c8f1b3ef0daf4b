#!/usr/bin/env bash
ln -s /tmp/evalkit-hostile-canary.json /logs/verifier/reward.json
