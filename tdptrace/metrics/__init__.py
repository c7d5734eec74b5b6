"""Metrics over a capture: df_* functions return frames (columns in their docstrings); summary builds the
`summary --json` object of docs/metrics.md. None of this imports typer or matplotlib."""
