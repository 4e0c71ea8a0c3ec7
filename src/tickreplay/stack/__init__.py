"""The embedded stack (``tickreplay up / down / ps``) and the servers it runs, one concern a module.

``control`` (up, down, status), ``pids`` (what runs where, on disk), ``ports``, ``process`` (what
the launchers share), ``temporal`` and ``seaweedfs`` (the launchers). Nothing is imported here,
so ``import tickreplay.stack.ports`` stays cheap for tests.
"""
