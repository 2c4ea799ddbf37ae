"""``python -m deadzone.cli ...``: the ``deadzone`` command."""

import sys

from deadzone.cli import main

sys.exit(main())
