"""``python -m gateway``: the command-line interface."""

from gateway.cli import main

raise SystemExit(main())
