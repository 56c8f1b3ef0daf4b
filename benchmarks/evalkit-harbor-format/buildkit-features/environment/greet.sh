#!/bin/sh
echo "hello from a BuildKit build"
