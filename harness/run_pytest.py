#!/usr/bin/env python3
"""Run one pytest file for `meson test`.

meson reads exit 77 as "skipped". pytest exits 0 when every test was skipped, which would make a
test that could not run look like a pass; this wrapper turns "nothing passed, something skipped,
nothing failed" into 77 and prints the skip reasons, and "no tests collected" into a failure.
"""
import sys

import pytest


class Outcomes:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.skipped = []

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.failed += 1
        elif report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.skipped.append(f"{report.nodeid}: {reason}")
        elif report.when == "call" and report.passed:
            self.passed += 1


def main():
    outcomes = Outcomes()
    rc = pytest.main(["-v", "-rs", "-p", "no:cacheprovider", *sys.argv[1:]], plugins=[outcomes])
    if rc == 5:
        print("run_pytest: no tests collected", file=sys.stderr)
        return 1
    if rc == 0 and outcomes.passed == 0 and outcomes.skipped:
        print("SKIPPED (exit 77):")
        for s in outcomes.skipped:
            print("  " + s)
        return 77
    return int(rc)


if __name__ == "__main__":
    sys.exit(main())
