# Shared by every step's test.sh: Harbor uploads tests/ and then steps/<name>/tests/ into /tests.
write_reward() {
  echo "$1" > /logs/verifier/reward.txt
}
