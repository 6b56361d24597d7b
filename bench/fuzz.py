"""
Run the coverage-guided fuzz target (tests/fuzz/fuzz_wire.py, atheris)
with a fixed budget and print what it did.

    .venv/bin/python -m bench.fuzz [--runs N] [--max-len BYTES] [--keep-corpus DIR]

The seed corpus (L{tests.fuzz.targets.seed_inputs}) is written to a
temporary directory that libFuzzer grows during the run. A crashing input
is written to tests/fuzz/corpus/crashes/ (libFuzzer's C{-artifact_prefix}),
where tests/test_fuzz_corpus.py replays it once the bug is fixed. Exit
status: 0 when no crash was found, 1 otherwise, 2 when atheris is absent.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(REPO_ROOT, "tests", "fuzz", "fuzz_wire.py")
CRASHES = os.path.join(REPO_ROOT, "tests", "fuzz", "corpus", "crashes")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs to execute (default 10^6)")
    parser.add_argument("--max-len", type=int, default=4096, help="longest input libFuzzer makes")
    parser.add_argument("--keep-corpus", default=None, help="grow this corpus directory instead of a temporary one")
    return parser.parse_args(argv)


def write_seeds(directory):
    sys.path.insert(0, REPO_ROOT)
    from tests.fuzz.targets import seed_inputs

    seeds = seed_inputs()
    for i, data in enumerate(seeds):
        with open(os.path.join(directory, f"seed-{i:03d}"), "wb") as f:
            f.write(data)
    return len(seeds)


def main(argv=None):
    args = parse_args(argv)
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed: pip install -e '.[fuzz]' (see docs/reliability.md)")
        return 2
    corpus = args.keep_corpus or tempfile.mkdtemp(prefix="cairn-fuzz-")
    os.makedirs(corpus, exist_ok=True)
    before = set(os.listdir(CRASHES))
    try:
        seeds = write_seeds(corpus)
        command = [
            sys.executable,
            TARGET,
            f"-runs={args.runs}",
            f"-max_len={args.max_len}",
            "-print_final_stats=1",
            f"-artifact_prefix={CRASHES}{os.sep}",
            corpus,
        ]
        started = time.monotonic()
        cpu = os.times()
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
        elapsed = time.monotonic() - started
        cpu_after = os.times()
        child_cpu = (cpu_after.children_user - cpu.children_user) + (cpu_after.children_system - cpu.children_system)
        corpus_size = len(os.listdir(corpus))
    finally:
        if args.keep_corpus is None:
            shutil.rmtree(corpus, ignore_errors=True)
    output = result.stderr + result.stdout
    stats = dict(re.findall(r"^stat::(\w+):\s+(\d+)", output, re.M))
    cov = re.findall(r"cov: (\d+) ft: (\d+)", output)
    crashes = sorted(set(os.listdir(CRASHES)) - before)
    print(f"target          {os.path.relpath(TARGET, REPO_ROOT)} (atheris, libFuzzer)")
    print(f"seeds           {seeds}")
    print(f"inputs executed {stats.get('number_of_executed_units', '?')} (asked {args.runs})")
    print(f"wall time       {elapsed:.1f} s, fuzzer CPU {child_cpu:.1f} s")
    print(f"exec/s          {stats.get('average_exec_per_sec', '?')}")
    if cov:
        print(f"coverage        {cov[-1][0]} edges, {cov[-1][1]} features")
    print(f"corpus          {corpus_size} inputs at the end")
    print(f"peak RSS        {stats.get('peak_rss_mb', '?')} MB")
    print(f"crashes         {len(crashes)}" + "".join(f"\n  {os.path.join(CRASHES, c)}" for c in crashes))
    if result.returncode != 0 and not crashes:
        print(output[-3000:])
    return 0 if result.returncode == 0 and not crashes else 1


if __name__ == "__main__":
    sys.exit(main())
