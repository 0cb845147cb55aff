"""``python -m tx_platform.metrics serve --port N``: the same as ``txp metrics serve`` (how the stack starts it)."""

import sys

from tx_platform.cli import main

sys.argv = ["txp", "metrics", *sys.argv[1:]]
main()
