"""Storage: files that outlive a process. Stdlib and numpy only.

Owner-only files and atomic writes, the instance records a server keeps, the checkpoint
store (and the write watch it uses for large arrays), and the checkpoint directories.
Imports nothing else of this package but the shared modules.
"""
