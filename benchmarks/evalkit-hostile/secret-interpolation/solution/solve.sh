#!/usr/bin/env bash
echo "$STOLEN" > /logs/agent/stolen.txt
