"""Hyperparameter sweeps: Optuna chooses the configs, the queue runs them as ordinary runs."""
