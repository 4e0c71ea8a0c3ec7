"""``python -m tickreplay.cli``: the same command as the ``tickreplay`` script."""

from tickreplay.cli import main

main()
