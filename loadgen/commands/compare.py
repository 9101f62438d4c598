"""`loadgen compare RUN_A RUN_B [...]`: the same figures side by side, differences against the
first run, flagged where they exceed the runs' own window-to-window noise."""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs", nargs="+", metavar="RUN", help="results folders; the first is the baseline (A)"
    )
    parser.add_argument(
        "--phase",
        metavar="NAME|A:B",
        help="compare this phase, or phases named differently: one name per run, e.g. "
        "main:cold (default: every phase name the runs share)",
    )
    parser.add_argument(
        "--html", metavar="OUT", help="also write the comparison as a self-contained HTML page"
    )


def execute(args: argparse.Namespace) -> int:
    from pathlib import Path

    from loadgen.errors import LoadgenError
    from loadgen.results.compare import (
        compare_runs,
        difference_warning,
        render_text,
        scenario_differences,
        version_differences,
    )
    from loadgen.results.rundir import corrupt_results, load_run
    from loadgen.safetext import for_terminal

    try:
        runs = [load_run(p) for p in args.runs]
        groups = compare_runs(runs, args.phase)
        warnings = []
        diffs = scenario_differences(runs)
        if diffs:
            warnings.append(difference_warning(diffs))
        versions = version_differences(runs)
        if versions:
            warnings.append(
                "client versions differ: "
                + "; ".join(f"{k} {' vs '.join(map(str, v))}" for k, v in versions.items())
            )
        text = render_text(runs, groups, [])
    except LoadgenError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a summary edited by hand can be any JSON: name the files
        print(f"loadgen: {', '.join(args.runs)}: {corrupt_results(exc)}", file=sys.stderr)
        return 2
    for w in warnings:
        print(for_terminal(f"loadgen: warning: {w}"), file=sys.stderr)
    print(for_terminal(text))  # model ids and names from the runs
    if args.html:
        from loadgen.results.report_compare import render_compare_html

        out = Path(args.html)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_compare_html(runs, groups, warnings), "utf-8")
        print(f"html: {out}")
    return 0
