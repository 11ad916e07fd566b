"""Runs: their states, validation, creation, lifecycle moves, reads, stored logs and artifacts.

Used by the web processes and the workers alike. Imports nothing from the queue, the
execution module, the worker or the web layer.
"""
