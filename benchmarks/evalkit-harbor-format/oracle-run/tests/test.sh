#!/usr/bin/env bash
set -uo pipefail
expected='pwd=/srv/work
DEBIAN_FRONTEND=noninteractive
tests=absent
script=/solution/solve.sh'
echo "oracle saw:"; cat /srv/work/oracle-facts.txt 2>/dev/null
echo "verifier: pwd=$(pwd) DEBIAN_FRONTEND=${DEBIAN_FRONTEND:-unset}"
if printf '%s\n' "$expected" | cmp -s - /srv/work/oracle-facts.txt \
   && [ "$(pwd)" = /srv/work ] && [ -z "${DEBIAN_FRONTEND:-}" ]; then
  echo 1 > /logs/verifier/reward.txt
else
  echo 0 > /logs/verifier/reward.txt
fi
