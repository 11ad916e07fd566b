"""Where runs' files are kept: a local folder or an object store bucket, and nothing else builds their keys."""
