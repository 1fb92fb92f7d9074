"""The Ray boundary: trial config -> Schedule -> stages -> tune.report (next issue)."""
