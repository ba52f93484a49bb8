"""``python -m dsm``: the dsm command line."""

from __future__ import annotations

from dsm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
