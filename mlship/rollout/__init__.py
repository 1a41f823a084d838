"""Stage 6: a new image -> traffic, in steps judged on Prometheus (canary, A/B, blue-green,
bandit)."""
