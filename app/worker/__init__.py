"""The worker process: its lifecycle around the queue and the execution path (`worker.py`)."""
