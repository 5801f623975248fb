"""Write benchmarks/LEADERBOARD.md and LEADERBOARD.csv: our results JSON files beside benchmarks/published.yaml.

    python benchmarks/leaderboard.py [RUN_DIR_OR_JSON ...]        (default: benchmarks/runs/, the tracked runs)
    vdreid leaderboard --runs log/ ...                              (the same, through the CLI)

One table per protocol string; runs of different protocols are never ranked against each other
(see vdreid.tools.leaderboard). Runs of a dataset with several train/test splits (RegDB's ten) are averaged into one
row. Runs on synthetic data (a tree written by `vdreid make-synthetic` holds the generator's marker) get tables of
their own and never sit beside published numbers.
"""

from __future__ import annotations

import argparse
import os.path as osp

from vdreid.tools.leaderboard import build_leaderboard

HERE = osp.dirname(osp.abspath(__file__))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", default=[osp.join(HERE, "runs")],
                   help="results JSON files or folders searched recursively")
    p.add_argument("--published", default=osp.join(HERE, "published.yaml"))
    p.add_argument("--out", default=osp.join(HERE, "LEADERBOARD.md"))
    p.add_argument("--csv", default=osp.join(HERE, "LEADERBOARD.csv"))
    args = p.parse_args(argv)
    rows = build_leaderboard(args.runs, args.published, args.out, args.csv)
    print(f"{len(rows)} rows -> {args.out}, {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
