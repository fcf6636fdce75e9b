"""`python -m droq_registry` is the `droq-registry` command."""

from .cli import main

raise SystemExit(main())
