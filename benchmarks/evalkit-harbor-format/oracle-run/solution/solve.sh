#!/usr/bin/env bash
set -euo pipefail
{
  echo "pwd=$(pwd)"
  echo "DEBIAN_FRONTEND=${DEBIAN_FRONTEND:-unset}"
  echo "tests=$( [ -e /tests ] && echo present || echo absent )"
  echo "script=$0"
} > /srv/work/oracle-facts.txt
