"""C{python -m cairn.cli}: the C{cairn-server} command."""

import sys

from cairn.cli import main

sys.exit(main())
