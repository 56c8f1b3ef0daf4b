#!/usr/bin/env bash
cd /logs/agent
ln -s /etc/passwd passwd-link
ln -s / root-link
mkfifo fifo
echo '{"forged": true}' > litellm-trajectory.jsonl
mkdir -p nested && echo kept > nested/kept.txt
echo fine > notes.txt
ln notes.txt hardlink.txt
