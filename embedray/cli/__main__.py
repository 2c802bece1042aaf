"""``python -m embedray.cli``: the same as the ``embedray`` command."""
import sys

from embedray.cli import main

sys.exit(main())
