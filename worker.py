"""Background worker: claims queued runs and carries them out. Start as many as you like.

Worker requires Postgres due to SKIP LOCKED semantics.

    python worker.py                    # until SIGTERM / SIGINT (lets its runs finish first)
    python worker.py --exit-when-idle   # drain the queue, then exit
    python worker.py --devices 0,1      # place runs on these devices only (default: all it finds)
    python worker.py --playground only  # answer the playground only (share: between runs, the default; off)
"""
import argparse
import os

from app import create_app
from app.worker.lifecycle import serve

RUNS_SIDE_BY_SIDE = 16  # a host's devices, at one run each, as the pool is sized for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exit-when-idle", action="store_true", help="exit once no run is pending")
    parser.add_argument("--devices", default=None, metavar="IDS",
                        help="device ids to place runs on, such as 0,1,2,3 (default: TUNIX_WORKER_DEVICES, or all)")
    parser.add_argument("--playground", default=None, choices=("share", "only", "off"),
                        help="answer playground requests: share (on a free device, between runs), only, or off "
                             "(default: TUNIX_WORKER_PLAYGROUND, or share)")
    args = parser.parse_args()
    # Each run it executes side by side holds two connections (its session's, and its claims and finishes');
    # the pool opens them as needed, up to this.
    os.environ.setdefault("TUNIX_DB_POOL_SIZE", str(2 * RUNS_SIDE_BY_SIDE + 2))
    serve(create_app(), exit_when_idle=args.exit_when_idle, device_ids=args.devices, playground=args.playground)


if __name__ == "__main__":
    main()
