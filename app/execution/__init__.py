"""Carrying out a run: the trainer subprocess (no database), and the one path around it that
prepares the run directory, records progress, keeps the lease and settles the outcome, for
sync requests and workers alike."""
