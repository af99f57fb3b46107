"""Kernel side: what runs inside IPython.

The interruption flag and callbacks, ``%lowcost`` and the REST client it calls, when
checkpoints are taken and restored, and the helpers for training loops. Imports
``storage`` and the shared modules; never the server.
"""
