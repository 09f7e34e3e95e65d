"""The flagship through the native engine: desktop-session (Xvfb + twm + xterm on a pty + xlogo +
dbus-daemon + a bus name owner, six programs under the container's agent, dumped as one image) in
a container, stop-and-copy and leave-running. Passes when the screenshot is identical before and
after, the same X clients are connected, the bus name is still owned by the same connection, and
the restored clients still draw: a variant of the scenario adds a check that makes every window
repaint (xrefresh maps and unmaps a window over the whole screen) and takes the screenshot after
that, so a client that is gone, stopped or disconnected leaves its window blank or missing."""
import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import ROOT, ok_record, require_container_support, run_crbench

REDRAW = '''
[[checks]]
name = "redrawn-screenshot-same"
argv = ["/bin/sh", "-c", "xrefresh -display {display} && sleep 0.5 && xwd -root -silent -display {display} | md5sum"]
expect = "same"
description = "every client repaints its windows on request, to the same pixels"
'''


@pytest.fixture(autouse=True)
def needs_container_support():
    require_container_support()
    for b in ("Xvfb", "twm", "xterm", "xlogo", "dbus-daemon", "xwd", "xrefresh"):
        if not shutil.which(b):
            pytest.skip(f"{b} is not installed (scripts/packages: xvfb twm xterm x11-apps x11-utils "
                        f"x11-xserver-utils dbus-daemon)")


def scenario_with_redraw(tmp_path):
    text = (ROOT / "scenarios" / "desktop-session.toml").read_text()
    text = text.replace('"/usr/bin/xwd",', '"/usr/bin/xwd", "/usr/bin/xrefresh",', 1)
    assert "/usr/bin/xrefresh" in text, "desktop-session.toml's binaries list changed: update this test"
    p = tmp_path / "desktop-session.toml"
    p.write_text(text + REDRAW)
    return p


@pytest.mark.parametrize("mode", ["stop-and-copy", "leave-running"])
def test_desktop_session_native(mode, tmp_path):
    scen = scenario_with_redraw(tmp_path)
    # The warm-up lets every program start (the last start after 2 s) before the checkpoint.
    p = run_crbench("run", scen, "--runtime", "container", "--engine", "native", "--mode", mode,
                    "--warmup-ms", "4000", "--no-record", "--json", timeout=300)
    rec = ok_record(p)
    checks = {c["name"]: c for c in rec["fidelity"]["checks"]}
    for name in ("process-tree", "fd-table", "scenario:screenshot-same", "scenario:x-clients-connected",
                 "scenario:redrawn-screenshot-same", "rest:dbus-name"):
        assert checks[name]["result"] == "pass", checks[name]
    # The X clients were all there (the digest lists them) and all six programs (+ xterm's cat) dumped.
    assert "xlogo" in checks["scenario:x-clients-connected"]["detail"], checks["scenario:x-clients-connected"]
    ck = rec["engine_report"]["checkpoint"]["engine_figures"]
    assert ck["processes"] >= 7, ck
