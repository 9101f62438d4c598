"""`loadgen report RESULTS_DIR`: (re)write a run's self-contained report.html and plots/*.png."""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "results",
        nargs="+",
        metavar="RESULTS_DIR",
        help="results folder(s) of `loadgen run` or `loadgen sweep`",
    )


def execute(args: argparse.Namespace) -> int:
    from pathlib import Path

    from loadgen.errors import LoadgenError
    from loadgen.results.report_run import matplotlib_missing, write_run_report
    from loadgen.results.report_sweep import SWEEP_FILE, write_sweep_report
    from loadgen.results.rundir import corrupt_results

    missing = matplotlib_missing()
    if missing:
        print(f"loadgen: warning: {missing}", file=sys.stderr)
    status = 0
    for folder in args.results:
        try:
            if (Path(folder) / SWEEP_FILE).is_file():
                path = write_sweep_report(folder)
            else:
                path = write_run_report(folder)
        except LoadgenError as exc:
            print(f"loadgen: {exc}", file=sys.stderr)
            status = 2
            continue
        except Exception as exc:  # a summary edited by hand can be any JSON: name the file
            print(f"loadgen: {folder}: {corrupt_results(exc)}", file=sys.stderr)
            status = 2
            continue
        print(path)
    return status
