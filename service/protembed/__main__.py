"""``python -m protembed`` = the ``protembed`` command."""

from protembed.cli import main

raise SystemExit(main())
