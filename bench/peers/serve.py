"""Serves a peer as `tidegate serve` serves tidegate: Granian, one worker, no access log; the peers are ASGI apps,
tidegate's own app (and `bench.slowed`) RSGI (`--interface rsgi`).

python -m bench.peers.serve bench.peers.noop:app --port 8001
python -m bench.peers.serve bench.peers.reference.main:app --port 8002
python -m bench.peers.serve bench.slowed:create_app --factory --interface rsgi --port 8003
"""

from __future__ import annotations

import argparse

from granian import Granian
from granian.constants import Interfaces


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="module:attribute of the app (or of its factory with --factory)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--factory", action="store_true")
    parser.add_argument("--interface", choices=("asgi", "rsgi"), default="asgi")
    args = parser.parse_args(argv)
    Granian(
        args.target,
        factory=args.factory,
        address=args.host,
        port=args.port,
        interface=Interfaces.RSGI if args.interface == "rsgi" else Interfaces.ASGI,
        workers=args.workers,
        log_access=False,
    ).serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
