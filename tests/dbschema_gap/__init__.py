"""A schema chain with a gap, for tests/test_db.py."""
