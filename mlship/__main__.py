"""`python -m mlship` is the `mlship` command."""

from mlship.cli import main

main()
