"""The trainer: run as its own process (`python -m app.trainer RUN_DIR`), it fine-tunes with Tunix.

It reads the run directory the execution module prepared (run_config.json, dataset.jsonl),
reports progress as JSON lines on stdout (app.contract.progress_protocol), writes its artifacts
into the run directory, and never touches the database. Only this package imports JAX, and of the app it
imports only `app.contract` (a test enforces both).
"""
