"""The `tfdp` command (also `python -m tfdp`): `tfdp env` and `tfdp doctor`.

    tfdp env [--json]
    tfdp doctor [--model MODULE:FN --data MODULE:FN] [--replicas N --steps K --global_batch_size B]

Exit status: `env` 0; `doctor` 0 when the runs are equivalent within the tolerance, 1
when they are not, 2 on a usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from tfdp.env_defaults import env_default
from tfdp.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    from tfdp import doctor

    parser = argparse.ArgumentParser(prog="tfdp", description="tfdp's tools: what this install is, and whether a "
                                     "model trains the same on N replicas as on one device.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{env,doctor}")
    env = commands.add_parser("env", help="versions, devices, the cluster this process is in, repairs, threads "
                              "(paste it into a bug report)")
    env.add_argument("--json", action="store_true", help="print JSON instead of text")
    check = commands.add_parser(
        "doctor", help="train on 1 device and on N CPU replicas from the same weights and compare",
        description="Without --model: a built-in model that exercises tfdp's repairs (a check of this install). "
                    "With --model/--data: your model, trained K steps on one device and on N CPU replicas from the "
                    "same initial weights at the same global batch; the largest weight difference per layer, a "
                    "verdict and the likely cause. Modules are imported from the current directory.",
        epilog="Exit status: 0 equivalent, 1 not equivalent, 2 a usage or configuration error.")
    check.add_argument("--model", default=None, metavar="MODULE:FN",
                       help="a function returning a compiled keras.Model (default: the built-in check)")
    check.add_argument("--data", default=None, metavar="MODULE:FN",
                       help="a function returning an unbatched tf.data.Dataset of (x, y) or arrays (x, y)")
    check.add_argument("--replicas", type=int, default=env_default("TFDP_DOCTOR_REPLICAS", 2, kind=int),
                       help="CPU replicas of the second run (default 2)")
    check.add_argument("--steps", type=int, default=5, help="optimizer steps on each side (default 5)")
    check.add_argument("--global_batch_size", type=int, default=None,
                       help="examples per step (default 9 for the built-in check, 8 otherwise)")
    check.add_argument("--tolerance", type=float, default=doctor.DEFAULT_TOLERANCE,
                       help="largest relative weight difference called equivalent (default %(default)g)")
    check.add_argument("--no_training_randomness", action="store_true",
                       help="run the layers that draw random numbers in training (Dropout...) with training=False, "
                            "to check the rest of the model")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _env(args: argparse.Namespace) -> int:
    from tfdp import env_report

    report = env_report.collect()
    print(json.dumps(report, indent=2) if args.json else env_report.render(report))
    return 0


def _doctor(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from tfdp import doctor

    if (args.model is None) != (args.data is None):
        parser.error("doctor: give --model and --data together (or neither, for the built-in check)")
    builtin = args.model is None
    try:
        report = doctor.compare(args.model or doctor.BUILTIN_MODEL, args.data or doctor.BUILTIN_DATA,
                                replicas=args.replicas, steps=args.steps,
                                global_batch_size=args.global_batch_size or (9 if builtin else 8),
                                tolerance=args.tolerance, training_randomness=not args.no_training_randomness)
    except ConfigError as e:
        print(f"tfdp doctor: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.render())
    if builtin and not report.equivalent:
        print("tfdp doctor: the built-in check failed: tfdp's repairs do not work on this install. Please report "
              "it with the output of `tfdp env`.", file=sys.stderr)
    return 0 if report.equivalent else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `tfdp` and `python -m tfdp`."""
    try:
        parser = _parser()
    except ConfigError as e:  # a malformed TFDP_* default
        print(f"tfdp: error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    if args.command == "env":
        return _env(args)
    return _doctor(args, parser)
