"""C{python -m bench.capacity}: see the package docstring."""

from bench.capacity.cli import main

main()
