from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    pass


def execute(args: argparse.Namespace) -> int:
    raise SystemExit("loadgen: this command is being built")
