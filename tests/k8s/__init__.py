"""Kubernetes backend tests, against a real two-node cluster started by the fixtures."""
