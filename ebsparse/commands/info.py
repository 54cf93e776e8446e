"""``ebsparse info``: which backend can run which op on this machine, and why not where it cannot."""

from __future__ import annotations

import argparse

NAME = "info"
HELP = "print the backends available here and why the others are not"


def configure(p: argparse.ArgumentParser) -> None:
    p.description = "Which backend can run which op on this machine, and why not where it cannot."


def run(args: argparse.Namespace) -> int:
    from .. import backends

    backends.report()
    return 0
