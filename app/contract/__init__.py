"""What the app and the trainer process share, free of JAX and of the database.

The trainer (`app.trainer`) may import from this package and nothing else of the app:
the progress protocol, the training plan, tokenizers, the model catalog and the names
of the files in a run directory.
"""
