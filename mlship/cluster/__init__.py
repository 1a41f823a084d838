"""Stage 5: rendered objects -> a cluster: checks, server-side apply, wait, rollback, state."""
