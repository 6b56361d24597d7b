"""
Run a module under cProfile with CPU time as the clock.

    python -m bench._cpuprofile OUT MODULE [ARGS...]

cProfile's default clock is wall time: on a loaded machine a system call
that lets another process run (a socket send waking the peer) is charged
milliseconds that are not this process's work. Profiles taken for
bench/README.rst use C{time.process_time} instead.
"""

import cProfile
import runpy
import sys
import time


def main():
    out, module = sys.argv[1], sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        profiler.disable()
        profiler.dump_stats(out)


if __name__ == "__main__":
    main()
