"""The search over pruning schedules and the `prunetune` command line."""
