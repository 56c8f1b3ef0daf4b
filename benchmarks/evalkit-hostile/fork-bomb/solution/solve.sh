#!/usr/bin/env bash
mkfifo /tmp/block
# dash shells are small: a full pids limit of them, each blocked on a read, fits in the task's memory.
sh -c 'exec 3<> /tmp/block; bomb() { bomb & bomb & read -r x <&3; }; bomb' 2>/dev/null &
exec 3<> /tmp/block
read -r -u 3  # hold on without forking until the agent timeout
