"""Schema chain of the trust store (component C{trust}): v1.sql, v2.sql, ..."""
