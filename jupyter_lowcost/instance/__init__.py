"""Instance side: the launcher every backend runs on an instance.

It starts ipykernel in its own process and speaks the launch protocol with the server.
Imports ``kernel`` (the interruption notice it delivers) and the shared modules.
"""
