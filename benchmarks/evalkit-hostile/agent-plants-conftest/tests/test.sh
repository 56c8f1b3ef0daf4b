#!/usr/bin/env bash
cd /tests
if python3 -m pytest -q -p no:cacheprovider test_answer.py > /logs/verifier/pytest.txt 2>&1; then
  echo 1 > /logs/verifier/reward.txt
else
  echo 0 > /logs/verifier/reward.txt
fi
