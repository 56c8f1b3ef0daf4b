#!/usr/bin/env bash
if perl -MSocket -e 'socket(my $s, AF_INET, SOCK_RAW, 1) or exit 1'; then echo opened; else echo refused; fi > /app/raw.txt
