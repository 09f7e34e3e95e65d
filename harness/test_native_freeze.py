"""The native engine's freeze with the work moved out of it (issue #9, session 5): image files whose
content is taken in the freeze (ipc.img, ipc-data.img, namespaces.img) are written after the tree
runs again and must still be in the image; the SEM_UNDO check compares with the dump guardian (no
fork in the freeze) and must still refuse; the final pre-copy round reads into a buffer prepared
before the freeze and falls back to one allocated in the freeze when the final set is larger."""
import json
import signal
import time

from conftest import start_program as start, cr, need_root, prog, wait_for
from test_native_precopy import need_uffd_wp, restore_and_check


def test_final_round_within_and_beyond_prepared_buffer(tmp_path, monkeypatch):
    """Both paths of the final round's destination: a converged dirty set fits the buffer faulted in
    before the freeze; with the buffer cut to 16 pages (the test hook) the final set is larger and
    is read into a buffer allocated in the freeze. Every byte is checked."""
    need_root()
    need_uffd_wp(tmp_path)
    for size_mib, rate, rounds, fits in [(32, 8, "6", True), (32, 16, "6", False)]:
        case = tmp_path / f"{fits}"
        case.mkdir()
        if not fits:
            monkeypatch.setenv("CRBENCH_PRECOPY_FINAL_BUFFER_PAGES", "16")
        go = case / "go"
        p, log = start([prog("tp_precopy"), str(go), str(size_mib), str(rate)], case)
        wait_for(log, "READY")
        time.sleep(0.3)
        img = case / "img"
        d = cr("dump", "--pre-copy", "--max-rounds", rounds, "--json", "--tree", p.pid, "--images", img)
        assert d.returncode == 0, d.stderr
        mem = json.loads(d.stdout)["memory"]
        final, room = mem["final"]["pages"], mem["final_buffer_pages"]
        assert room > 0, mem
        assert (final <= room) == fits, f"final round {final} pages, prepared buffer {room} pages: {mem}"
        restore_and_check(p, log, go, img)


def test_sysv_objects_and_clocks_written_after_the_freeze(tmp_path):
    """A pre-copy dump of a tree in its own IPC namespace (semaphores, a message queue): ipc.img,
    ipc-data.img and namespaces.img (written after the release now) are in the image, the checksums
    hold, and the restored copy finds the objects as they were."""
    need_root()
    need_uffd_wp(tmp_path)
    go = tmp_path / "go"
    p, log = start([prog("tp_sysv_ipc"), str(go)], tmp_path)
    wait_for(log, "READY")
    img = tmp_path / "img"
    d = cr("dump", "--pre-copy", "--tree", p.pid, "--images", img)
    assert d.returncode == 0, d.stderr
    for f in ("ipc.img", "ipc-data.img", "namespaces.img"):
        assert (img / f).exists(), f"{f} missing from the pre-copy image: {sorted(x.name for x in img.iterdir())}"
    s = cr("show", img)
    assert s.returncode == 0 and "all checksums verified" in s.stdout, s.stderr
    go.touch()  # the original ran on and finds its queue untouched (MSG_COPY)
    assert p.wait(timeout=10) == 0 and "PASS" in log.read_text(), log.read_text()
    log.write_text("")
    r = cr("restore", "--images", img)
    assert r.returncode == 0 and "PASS" in log.read_text(), r.stderr + log.read_text()


def test_semaphore_undo_still_refused_in_precopy(tmp_path):
    """The SEM_UNDO check now compares each thread with the dump guardian (forked before the freeze,
    no undo list) instead of a child forked in the freeze: a holder is still refused by name, and the
    tree is left running with its lock."""
    need_root()
    need_uffd_wp(tmp_path)
    go = tmp_path / "go"
    p, log = start([prog("tp_semundo"), str(go)], tmp_path)
    wait_for(log, "READY")
    d = cr("dump", "--pre-copy", "--tree", p.pid, "--images", tmp_path / "img")
    assert d.returncode != 0, "a process holding a SEM_UNDO adjustment must be refused"
    assert "SEM_UNDO" in d.stderr and "key 0x5e3d" in d.stderr and "unsupported:" in d.stderr, d.stderr
    assert not (tmp_path / "img" / "inventory.img").exists()
    go.touch()
    assert p.wait(timeout=10) == 0 and "PASS" in log.read_text(), log.read_text()
