"""``python -m gateway``: the command-line interface."""

from gateway.edges.cli import main

raise SystemExit(main())
