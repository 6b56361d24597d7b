"""Schema chain used by tests/test_db.py."""
