"""Alembic migrations for the submitgw database."""
