"""Server side: what runs inside the Jupyter server.

The extension app (:mod:`.app`), its REST handlers and their schemas, the kernel
provisioner, the launch channel's server end, events, the instance-type catalog, and the
instance manager split into its roles. Imports ``backends``, ``storage`` and the shared
modules at the package's top (``env``, ``words``, ``protocol``); never ``kernel`` or
``instance``, which run elsewhere.
"""
