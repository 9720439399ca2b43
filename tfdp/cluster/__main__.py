"""`python -m tfdp.cluster slurm|kubernetes [--port P]`: print this task's TF_CONFIG."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tfdp.cluster.tf_config import TFConfig
from tfdp.errors import ConfigError

_SOURCES = {"slurm": TFConfig.from_slurm, "kubernetes": TFConfig.from_kubernetes}


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the TF_CONFIG of this task, read from the scheduler's environment."""
    parser = argparse.ArgumentParser(prog="python -m tfdp.cluster",
                                     description="Print the TF_CONFIG of this task.")
    parser.add_argument("source", choices=sorted(_SOURCES), help="Where the cluster comes from.")
    parser.add_argument("--port", type=int, default=None,
                        help="Port of the first task on each node (default 12345; kubernetes: TFDP_K8S_PORT).")
    args = parser.parse_args(argv)
    if args.port is not None and not 1024 <= args.port <= 65535:
        parser.error(f"--port {args.port}: must lie in 1024..65535")
    try:
        kwargs = {} if args.port is None else {"port": args.port}
        print(_SOURCES[args.source](**kwargs).to_json())
    except ConfigError as e:
        print(f"python -m tfdp.cluster: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
