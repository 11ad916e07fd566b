"""Entry point: `python -m app.trainer RUN_DIR`. Exit 0 on success, 1 on a training error,
2 on a bad run directory, 3 when the Tunix/JAX stack is not installed."""
from __future__ import annotations

import time

STARTED = time.monotonic()  # before the heavy imports: time to first step counts them

import json
import logging
import os
import sys
import traceback
from pathlib import Path

from app.contract import progress_protocol
from app.contract.run_files import COMPILATION_CACHE_ENV, RUN_CONFIG_FILE

EXIT_TRAINING_ERROR, EXIT_BAD_RUN_DIR, EXIT_MISSING_STACK = 1, 2, 3


def _fail(code: int, message: str) -> int:
    progress_protocol.emit("error", message=message)
    print(f"trainer: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        return _fail(EXIT_BAD_RUN_DIR, "usage: python -m app.trainer RUN_DIR")
    run_dir = Path(argv[0])
    try:
        config = json.loads((run_dir / RUN_CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        return _fail(EXIT_BAD_RUN_DIR, f"cannot read {run_dir / RUN_CONFIG_FILE}: {exc}")
    try:
        import jax  # noqa: F401
        import tunix  # noqa: F401
    except ImportError as exc:
        return _fail(EXIT_MISSING_STACK, f"the Tunix training stack is not installed ({exc.name} is missing): "
                                         "install requirements-trainer.txt and requirements-tunix.txt "
                                         "(`make install` does both)")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from app.trainer import compilation_cache

    compilation_cache.use(os.environ.get(COMPILATION_CACHE_ENV, ""))
    from app.trainer.training import train

    try:
        train(run_dir, config, started=STARTED)
    except Exception as exc:  # report any training failure through the protocol, then exit non-zero
        traceback.print_exc()
        return _fail(EXIT_TRAINING_ERROR, f"{type(exc).__name__}: {exc}"[:2000])
    return 0


def _exit(code: int) -> None:
    # Orbax's background checkpoint threads are not daemons: after a failure mid-save one
    # can keep the process alive forever, and the run would hang until its timeout. The
    # outcome is already reported and the files are written, so end the process outright.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(main(sys.argv[1:]))
