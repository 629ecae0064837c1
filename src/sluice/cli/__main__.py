"""`python -m sluice.cli`: the `sluice` command, as the supervisor starts its children."""

import sys

from sluice.cli.main import main

sys.exit(main())
