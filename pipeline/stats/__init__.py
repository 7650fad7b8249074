"""Statistics: per-user ranking metrics, the seed-aware significance test, the test-split metrics."""
