"""
README.rst documents every setting: each environment variable that
L{cairn.config.Config} reads has a row in README.rst's configuration table.
"""

import os
import re

import attr
from twisted.trial import unittest

from cairn.config import Config

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.rst")


def table_variables() -> set[str]:
    """The variables named in the first column of README.rst's list-table rows."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    return set(re.findall(r"^   \* - ``(CAIRN_[A-Z0-9_]+)``$", text, re.MULTILINE))


class ReadmeTableTests(unittest.TestCase):
    def test_every_variable_has_a_row(self) -> None:
        """Each variable Config reads is a row of the table, so a new setting cannot go undocumented."""
        read = {Config.variable(field.name) for field in attr.fields(Config)}
        self.assertGreater(len(read), 40)
        self.assertEqual(sorted(read - table_variables()), [])

    def test_every_row_is_a_variable(self) -> None:
        """Each row of the table names a variable Config reads (no row left behind by a removal)."""
        read = {Config.variable(field.name) for field in attr.fields(Config)}
        self.assertEqual(sorted(table_variables() - read), [])
