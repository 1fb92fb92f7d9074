"""`python -m search.cli ...`: the same as the `prunetune` console script."""

from search.cli import run

run()
