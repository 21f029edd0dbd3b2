"""The domain core: pure rules and decisions (no Prefect, no database, no network)."""
