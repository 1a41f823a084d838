"""Talking to a running mlship runtime: the HTTP client and a local server process."""
