#!/usr/bin/env bash
# print the largest integer argument
max=0
for n in "$@"; do
  if [[ $n > $max ]]; then
    max=$n
  fi
done
echo "$max"
