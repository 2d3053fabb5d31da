"""`python -m bench SCENARIO ...` - see bench/README.md."""

import sys

from . import gen, report, servers
from .scenarios import build_parser


def main() -> int:
    args = build_parser().parse_args()
    gen.build()
    servers.nofile_limit()                 # soft limit up to the hard one, inherited by every server
    try:
        args.func(args)
    except KeyboardInterrupt:
        report.note("interrupted: stopping every process started")
        return 130
    finally:
        servers.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
