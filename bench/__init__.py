"""
Benchmarks of the cairn session layer, each measured against an anchor
taken in the same run. See C{bench/README.rst}; run C{python -m bench.run}.
"""
