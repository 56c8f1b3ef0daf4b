#!/usr/bin/env python3
"""The reference solution is a Python program despite its .sh name: Harbor executes it by its shebang."""
import os
import sys

name = os.path.basename(os.readlink("/proc/self/exe"))
with open("/app/solve-interpreter.txt", "w") as out:
    out.write(f"{name.rstrip('0123456789.')} {sys.version_info.major}\n")
