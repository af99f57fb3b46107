"""Which jupyter-scheduler row is which of our jobs: a table of its own, ``lowcost_links``,
in jupyter-scheduler's database.

Who calls it: :class:`~.scheduler.LowCostScheduler` (a link when our job is made, and when
its row is deleted) and :mod:`.rows` (the links of rows not yet final). A link outlives a
deleted row (``row_deleted``), so that a job whose row its user deleted gets no new row
as a job of ``jupyter lowcost run`` would.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, Column, String, create_engine
from sqlalchemy.orm import declarative_base

Base: Any = declarative_base()


class Link(Base):  # type: ignore[misc,valid-type]
    """One row (``job_id``) and our job (``lowcost_id``)."""

    __tablename__ = "lowcost_links"
    job_id = Column(String(36), primary_key=True)
    lowcost_id = Column(String(36), index=True, nullable=False)
    #: Our job has ended and its row says so (its output files are staged).
    final = Column(Boolean, default=False, nullable=False)
    #: The row was deleted (the link stays: the job gets no row again).
    row_deleted = Column(Boolean, default=False, nullable=False)


def create_table(db_url: str) -> None:
    """Make the table if it is not there (called when the scheduler is built)."""
    engine = create_engine(db_url)
    try:
        Base.metadata.create_all(engine)
    finally:
        engine.dispose()


def link_of(session: Any, job_id: str) -> Link | None:
    return session.get(Link, job_id)


def linked_ids(session: Any) -> set[str]:
    """Our jobs that have (or had) a row."""
    return {lowcost_id for (lowcost_id,) in session.query(Link.lowcost_id).all()}


def open_links(session: Any) -> list[Link]:
    """The links whose rows are not final yet."""
    return session.query(Link).filter(Link.final.is_(False), Link.row_deleted.is_(False)).all()
