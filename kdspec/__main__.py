"""``python -m kdspec``."""

import sys

from kdspec.cli.main import main

sys.exit(main())
