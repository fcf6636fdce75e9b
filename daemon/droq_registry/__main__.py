"""`python -m droq_registry` is the `droq-registry` command."""

from .command import main

raise SystemExit(main())
