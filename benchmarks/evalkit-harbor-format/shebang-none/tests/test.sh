# No shebang either: bash runs it the same way.
exe=$(readlink /proc/$$/exe)
me=$(basename "$exe")
solver=$(cat /app/solve-interpreter.txt 2>/dev/null)
echo "solve.sh ran under '$solver', test.sh under '$me'"
if [ "$solver" = bash ] && [ "$me" = bash ]; then
  echo 1 > /logs/verifier/reward.txt
else
  echo 0 > /logs/verifier/reward.txt
fi
