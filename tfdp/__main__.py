"""`python -m tfdp`: the `tfdp` command (tfdp/cli.py)."""

import sys

from tfdp.cli import main

sys.exit(main())
