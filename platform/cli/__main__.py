"""``python -m finegrain.platform.cli``."""

from finegrain.platform.cli import main

main()
