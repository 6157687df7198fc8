"""Postgres: request logs, analytics views and user @tag references (asyncpg)."""
