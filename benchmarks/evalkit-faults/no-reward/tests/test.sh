#!/usr/bin/env bash
# succeeds but never writes /logs/verifier/reward.txt or reward.json: expected RewardFileMissingError
echo "checked /app/answer.txt: $(cat /app/answer.txt 2>/dev/null)"
exit 0
