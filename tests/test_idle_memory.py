"""
What an idle node and an idle session hold (issue 19: 10,000 TCP and
WebSocket sessions in under 128 MB of node RSS).
"""

import os
import sys

from twisted.internet import utils
from twisted.trial import unittest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Made in a fresh interpreter: what a node without the management API imports.
_IMPORTS = """
import sys
from cairn.service import make_node
from cairn.node import CairnNode
print(" ".join(sorted(name for name in sys.modules if name.split(".")[0] in ("klein", "werkzeug", "segno")
                      or name == "cairn.management.app")))
"""


class LazyImportTests(unittest.TestCase):
    timeout = 60

    def test_management_api_modules_not_imported_without_it(self):
        """
        Building a node imports the management API's modules (klein,
        werkzeug, segno: about 7 MB of RSS) only for a node that serves it.
        """
        env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        d = utils.getProcessOutputAndValue(sys.executable, ["-c", _IMPORTS], env=env, path=REPO_ROOT)

        def check(result):
            out, err, code = result
            self.assertEqual(code, 0, err.decode("utf-8", "replace"))
            self.assertEqual(out.decode().strip(), "")

        return d.addCallback(check)
