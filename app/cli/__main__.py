"""`python -m app.cli`, as the `mtl` command."""

import sys

from app.cli.main import main

sys.exit(main())
