"""`python -m vdreid ...` is the same as the `vdreid` console script."""

from vdreid.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
