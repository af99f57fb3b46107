"""The version of jupyter-lowcost, read by hatchling and reported by ``GET status``."""

__version__ = "0.1.0"
