"""``python -m dime`` is ``python -m dime.train``."""

import sys

from dime.train import main

sys.exit(main())
