"""``python -m walrus_p2p.cli``: the same as the ``walrus-peer`` script."""

import sys

from walrus_p2p.cli import main

sys.exit(main())
