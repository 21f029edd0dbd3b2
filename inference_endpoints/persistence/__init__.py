"""Persistence: registry tables, repositories with guarded updates, migrations, the checkpoint store."""
