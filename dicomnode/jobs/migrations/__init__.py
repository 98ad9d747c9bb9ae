"""The job store's schema migrations (Alembic), for SQLite and PostgreSQL.

The store runs them itself when it opens a database (see
:func:`dicomnode.jobs.sqlstore.migrate`); ``script.py.mako`` is the template
of a new revision (``alembic revision`` with ``script_location`` pointing here).
"""
