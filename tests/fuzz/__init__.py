"""
Fuzzing targets shared by the property-based tests (C{tests/test_fuzz_*})
and the coverage-guided fuzzer (C{tests/fuzz/fuzz_wire.py}).
"""
