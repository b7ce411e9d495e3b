"""`python -m justrl_min SUBCOMMAND ...` is the `justrl` command (justrl_min/cli.py)."""

import sys

from justrl_min.cli import main

sys.exit(main())
