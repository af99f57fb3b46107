"""What ``jupyter lowcost`` prints about a job: its progress line (a bar of cells done,
the current cell, elapsed time, cost, interruptions) and its details.

Called by the commands of :mod:`.app` with the job's model (``GET jobs/<id>``).
"""

from __future__ import annotations

from typing import Any

from ..words import format_duration

BAR_WIDTH = 20


def progress_line(job: dict[str, Any]) -> str:
    """``[########------------] 4/10 cells · cell 5 · 12 s · $0.0021 · 1 interruption ·
    running``: how far the job is, in one line."""
    total = int(job.get("cells_total") or 0)
    done = int(job.get("cells_done") or 0)
    filled = round(BAR_WIDTH * done / total) if total else BAR_WIDTH
    parts = [f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {done}/{total} cells"]
    if job.get("current_cell") and job["state"] in ("running", "resuming"):
        source = job.get("current_source") or ""
        short = source if len(source) <= 40 else source[:37] + "..."
        parts.append(f"cell {job['current_cell']}" + (f": {short}" if short else ""))
    parts.append(format_duration(float(job.get("elapsed_seconds") or 0)))
    parts.append(money(job))
    interruptions = len(job.get("interruptions") or [])
    if interruptions:
        parts.append(f"{interruptions} interruption{'s' if interruptions != 1 else ''}")
    parts.append(job["state"])
    return " · ".join(parts)


def money(job: dict[str, Any]) -> str:
    text = f"${float(job.get('cost') or 0):.4f}"
    if job.get("saved"):
        text += f" (saved ${float(job['saved']):.4f})"
    return text


def details(job: dict[str, Any]) -> str:
    """``jupyter lowcost show``: everything about one job, one fact per line."""
    lines = [
        f"Job {job['id']}: {job['name']}",
        f"  state:         {job['state']} ({job['reason']})",
        f"  cells:         {job['cells_done']}/{job['cells_total']} done"
        + (f", cell {job['current_cell']} now" if job.get("current_cell") else ""),
        f"  placement:     {job['tier']} {job['instance_type']} (kernel {job['kernel_name']})",
        f"  instance:      {job.get('instance_id') or '-'}",
        f"  elapsed:       {format_duration(float(job.get('elapsed_seconds') or 0))}",
        f"  cost:          {money(job)}",
        f"  created:       {job.get('created')}",
    ]
    if job.get("parameters"):
        shown = ", ".join(f"{k}={v!r}" for k, v in job["parameters"].items())
        lines.append(f"  parameters:    {shown}")
    if job.get("output_path"):
        lines.append(f"  output:        {job['output_path']} (on the server)")
    for item in job.get("interruptions") or []:
        lines.append(
            f"  interrupted:   cell {item['cell']} on {item['instance_id']} at {item['at']}: "
            f"{item['reason']}"
        )
        if item.get("note"):
            lines.append(f"  not restored:  {item['note']}")
    error = job.get("error")
    if error:
        lines.append(f"  error:         cell {error['cell']}: {error['ename']}: {error['evalue']}")
    return "\n".join(lines)


def resume_notes(job: dict[str, Any]) -> dict[int, str]:
    """What the job's resume after each interruption (by number) did not bring back: the
    variables, and the cells that define them, one line each (``run`` prints them)."""
    return {
        n: f"after interruption {n}: {item['note']}"
        for n, item in enumerate(job.get("interruptions") or [], start=1)
        if item.get("note")
    }


def table(jobs: list[dict[str, Any]]) -> str:
    """``jupyter lowcost jobs``: one line per job."""
    if not jobs:
        return "No jobs."
    rows = [("ID", "STATE", "CELLS", "PLACEMENT", "COST", "NAME")]
    for job in jobs:
        rows.append(
            (
                job["id"],
                job["state"],
                f"{job['cells_done']}/{job['cells_total']}",
                f"{job['tier']} {job['instance_type']}",
                f"${float(job['cost']):.4f}",
                job["name"],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1]
        for row in rows
    )
