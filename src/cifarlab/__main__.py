"""`python -m cifarlab` (and `torchrun -m cifarlab`) run the command line."""

import sys

from .cli import main

sys.exit(main())
