"""The ``batmann`` command: one entry point, one module per group of subcommands.

Each module in :data:`COMMAND_MODULES` exposes ``register(subparsers)``, which adds its
subcommands and sets ``func`` on them. Errors caused by bad input (:class:`BatmannError` and
the hardware-specification errors of ``crossbar``/``device_models``) end as one line on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from batmann.errors import BatmannError
from batmann.utils.allocator import retain_freed_memory

# Each module holds one group of subcommands (add yours here).
COMMAND_MODULES: tuple[str, ...] = (
    "batmann.cli.data_cmd",
    "batmann.cli.train_cmd",
    "batmann.cli.evaluate_cmd",
    "batmann.cli.classify_cmd",
    "batmann.cli.crossbar_cmd",
    "batmann.cli.study_cmd",
    "batmann.cli.experiment_cmd",
    "batmann.cli.demo_cmd",
)


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``batmann ...: error: message``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input rather than a bug."""
    types: list[type[BaseException]] = [BatmannError]
    for mod, name in (("device_models.errors", "HardwareSpecError"),):
        try:
            types.append(getattr(importlib.import_module(mod), name))
        except (ImportError, AttributeError):
            pass
    return tuple(types)


def build_parser() -> argparse.ArgumentParser:
    """The full ``batmann`` parser with every registered subcommand."""
    parser = OneLineParser(
        prog="batmann",
        description="Train binarized memory-augmented neural networks for few-shot learning "
        "and simulate them on RRAM crossbars.",
    )
    from batmann import __version__

    parser.add_argument("--version", action="version", version=f"batmann-rram {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``batmann`` command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    retain_freed_memory()
    try:
        status = args.func(args)
    except user_error_types() as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"batmann {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"batmann {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
