"""A search's report: what it shows read back from MLflow (data.py), its PNG plots (plots.py)
and the self-contained report.html (html.py)."""
