"""`python -m justrl_min SUBCOMMAND ...` is the `justrl` command (justrl_min/tools/cli.py)."""

import sys

from justrl_min.tools.cli import main

sys.exit(main())
