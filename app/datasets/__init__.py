"""Datasets: parsing and checking uploads, storing and reading them, and the bundled sample."""
