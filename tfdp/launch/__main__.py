"""`python -m tfdp.launch`: the same as `tfdp-launch`."""

import sys

from tfdp.launch import main

sys.exit(main())
