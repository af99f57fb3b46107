"""Slurm backend tests, against a real one-node Slurm cluster started by the fixtures."""
