"""Durations and sizes in words, for messages, logs and ``%lowcost``: one home for each
format. Stdlib only; every layer imports this module.
"""

from __future__ import annotations


def describe_seconds(seconds: float) -> str:
    """``86400`` -> "24 hours", ``600`` -> "10 minutes", ``90`` -> "1.5 minutes",
    ``45`` -> "45 seconds": for sentences (server messages and logs)."""
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= size:
            amount = round(seconds / size, 1)
            return f"{amount:g} {unit}{'' if amount == 1 else 's'}"
    return f"{seconds:g} second{'' if seconds == 1 else 's'}"


def format_duration(seconds: float) -> str:
    """``23 h 59 min``, ``4 min 10 s``, ``12 s``: a clock-like time left (``%lowcost``)."""
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def human_bytes(n: float) -> str:
    """``512`` -> "512 B", ``1.5e6`` -> "1.5 MB" (decimal units, as disks are sold)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
