"""``python -m ebsparse`` is the ``ebsparse`` command."""

import sys

from .cli import main

sys.exit(main())
