#!/usr/bin/env python3
"""The verifier is Python too; it writes the reward like any test.sh."""
import os

me = os.path.basename(os.readlink("/proc/self/exe")).rstrip("0123456789.")
try:
    with open("/app/solve-interpreter.txt") as f:
        solver = f.read().strip()
except OSError:
    solver = ""
print(f"solve.sh ran under {solver!r}, test.sh under {me!r}")
reward = 1 if solver == "python 3" and me == "python" else 0
os.makedirs("/logs/verifier", exist_ok=True)
with open("/logs/verifier/reward.txt", "w") as out:
    out.write(f"{reward}\n")
