"""`python -m mailstack` runs the admin CLI."""

from mailstack.cli import main

raise SystemExit(main())
