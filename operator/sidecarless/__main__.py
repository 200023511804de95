"""`python -m sidecarless` is the `sidecarless` command."""

import sys

from sidecarless.cli import main

sys.exit(main())
