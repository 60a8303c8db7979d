"""What the stores refuse, under one base, and what counts as the database failing.

A `StoreError` is an answer about the data (no such row, already there, wrong
state, wrong schema): callers catch the base, or `NotFound`/`Exists`, instead
of naming every store's exception. `DATABASE_FAILURES` is the database itself
failing (connection lost, locked, table missing): temporary, never an answer;
`BAD_ROWS` the few of them that no retry can cure.
"""

from __future__ import annotations

from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError


class StoreError(Exception):
    """A store refused an operation; the text is meant for the admin."""


class NotFound(StoreError):
    """The row an operation needs does not exist."""


class Exists(StoreError):
    """The row an operation would create is already there."""


DATABASE_FAILURES: tuple[type[Exception], ...] = (SQLAlchemyError,)
# A row the database will not take however often it is tried (a value it cannot
# store, a constraint): the database works, the row is the problem.
BAD_ROWS: tuple[type[Exception], ...] = (DataError, IntegrityError)
