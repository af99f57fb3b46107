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


def cells(first: int, last: int) -> str:
    """``cell [13]``, ``cells [13]–[14]``: execution counts as the notebook shows them."""
    return f"cell [{first}]" if first == last else f"cells [{first}]–[{last}]"


def resume_point(
    execution_count: int | None, taken_during: int | None, last_execution_count: int | None
) -> tuple[str, str]:
    """Where a resumed kernel is back at, and which cells' changes it lost, for a resume's
    message (the server's, ``%lowcost``): ``("at cell [12]", "the changes of cells
    [13]–[14] are lost")``. ``execution_count``: the last cell the checkpoint holds whole;
    ``taken_during``: the cell it was taken in the middle of (a notice's checkpoint
    during a cell), if any; ``last_execution_count``: the last cell started before the
    instance was lost. Unknown counts (None) claim nothing."""
    if execution_count is None:
        return "", ""
    if taken_during is not None:
        where = f"in cell [{taken_during}]"
        lost = [f"the changes of cell [{taken_during}] after the checkpoint"]
        if last_execution_count is not None and last_execution_count > taken_during:
            lost.append(f"those of {cells(taken_during + 1, last_execution_count)}")
        return where, " and ".join(lost) + " are lost"
    where = f"at cell [{execution_count}]"
    if last_execution_count is None or last_execution_count <= execution_count:
        return where, ""
    return where, f"the changes of {cells(execution_count + 1, last_execution_count)} are lost"


def listed(names: list[str], total: int) -> str:
    """``a, b and 3 more``: the first names of a list of ``total``."""
    text = ", ".join(names)
    more = total - len(names)
    return f"{text} and {more:,} more" if more > 0 and names else text
