"""``python -m textloc``: the same command line as the ``textloc`` script."""

from textloc.cli import main

raise SystemExit(main())
