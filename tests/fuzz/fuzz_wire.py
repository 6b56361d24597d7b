"""
Coverage-guided fuzzing of cairn's wire handling with atheris (libFuzzer).

The target is L{tests.fuzz.targets.one_input}: the stream parser fed
arbitrary chunks, single-envelope decoding, CBOR decoding and every body
parser, PeerAnnounce verification, sealed envelopes of every type on an
established session of a whole in-memory node, and raw bytes to a
responder before its handshake. An input "crashes" when any of them
answers with something the protocol does not allow (L{targets.Unexpected})
or raises anything else; libFuzzer then writes it under
C{-artifact_prefix} and stops.

    python tests/fuzz/fuzz_wire.py -runs=1000000 [corpus dir ...]

or C{python bench/fuzz.py}, which adds a seed corpus and a fixed budget.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import atheris  # noqa: E402

with atheris.instrument_imports(include=["cairn", "tests.fuzz"]):
    from tests.fuzz import targets  # noqa: E402


def test_one_input(data: bytes) -> None:
    targets.one_input(data)


def main(argv=None):
    atheris.Setup(list(argv or sys.argv), test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
