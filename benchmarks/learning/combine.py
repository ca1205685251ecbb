"""One table and one pair of plots from several comparison runs, e.g. a learning-rate sweep.

    python benchmarks/learning/combine.py --out benchmarks/results/learning-all \
        benchmarks/results/learning benchmarks/results/learning-sft-lr3e-4:"lr 3e-4"

Each argument is a ``results.json`` folder written by ``compare.py``, optionally followed by
``:<tag>``; the tag is added to the names of that folder's methods ("rft, lr 3e-4"), so the same
method run with other settings stays a separate curve. ``:<method>=<tag>`` tags that method only.
Runs of one method (after tagging) from several folders are one method: more seeds of the same
settings can come from another run. All runs must share the budget and marks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from learning_report import LABELS, summarize, write_report  # noqa: E402


def tagged_runs(spec: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The runs and meta of ``<folder>[:[<method>=]<tag>]``, with the tag appended to the names of
    the folder's methods (of ``<method>`` only, when given)."""
    folder, _, tag = spec.partition(":")
    only, _, method_tag = tag.partition("=")
    only, tag = (only, method_tag) if method_tag else (None, tag)
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)
    runs = results["runs"]
    if only is not None and only not in {run["method"] for run in runs}:
        raise ValueError(f"{spec}: {folder} has no runs of {only!r}.")
    for run in runs:
        base = run["method"]
        if tag and only in (None, base):
            run["method"] = f"{base}, {tag}"
            LABELS[run["method"]] = f"{LABELS.get(base, base)}, {tag}"
    return runs, results["meta"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="compare.py output folders, each optionally ':<tag>'")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    runs: list[dict[str, Any]] = []
    metas = []
    for spec in args.folders:
        more, meta = tagged_runs(spec)
        runs += more
        metas.append(meta)
    os.makedirs(args.out, exist_ok=True)
    meta = {"cpu_count": metas[0].get("cpu_count"), "sources": list(args.folders)}
    summary = summarize(runs)
    table = write_report(summary, runs, meta, args.out)
    print(table)


if __name__ == "__main__":
    main()
