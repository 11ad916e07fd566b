"""Background worker: claims queued runs and carries them out. Start as many as you like.

Worker requires Postgres due to SKIP LOCKED semantics.

    python worker.py                    # until SIGTERM / SIGINT (finishes its current run first)
    python worker.py --exit-when-idle   # drain the queue, then exit
"""
import argparse

from app import create_app
from app.worker.lifecycle import serve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exit-when-idle", action="store_true", help="exit once no run is pending")
    args = parser.parse_args()
    serve(create_app(), exit_when_idle=args.exit_when_idle)


if __name__ == "__main__":
    main()
