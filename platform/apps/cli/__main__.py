"""``python -m finegrain.platform.apps.cli``."""

from finegrain.platform.apps.cli import main

main()
