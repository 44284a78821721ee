"""``python -m bench``: the whole comparison against Postfix (see bench/run.py)."""

import sys

from bench.run import main

sys.exit(main())
