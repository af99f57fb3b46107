"""Client: talks to a running Jupyter server's lowcost REST API (``{base_url}lowcost/api/``).

Used by the kernel's ``%lowcost`` (and the checkpoints' reports to the server) and by the
``jupyter lowcost`` commands; each caller finds the server its own way (the kernel from
its environment, the commands from ``--url``/``--token`` or the running servers) and words
the failures as its user reads them. Imports nothing of this package but the shared
modules; needs ``requests``.
"""
