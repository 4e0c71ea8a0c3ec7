"""The metadata database: users, API tokens, jobs and their events (SQLAlchemy 2 + Alembic).

SQLite (a file in the stack's state dir) by default, PostgreSQL by ``TICKREPLAY_DB_DSN``. The
schema is owned by the Alembic migrations in ``migrations/``; ``models.py`` mirrors it for the
ORM, and a test checks the two agree.
"""
