"""The ``crossent`` command (argparse subcommands); the only module that parses arguments."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _demo(args: argparse.Namespace) -> int:
    import numpy as np

    import crossent

    logits = np.array([2.0, 4.0, 0.5])
    print("logits [2, 4, 0.5]; softmax:", np.round(crossent.softmax(logits, 0), 6))
    for target in range(3):
        out = crossent.cross_entropy_and_grad(logits, np.array(target))
        print(f"target {target}: loss {float(out.loss):.7f}  grad {np.round(out.grad_input, 6)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crossent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="cross-entropy of the logits [2, 4, 0.5]").set_defaults(
        func=_demo
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
