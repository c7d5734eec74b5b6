"""Files another user planted where root writes: tdptrace runs as root on hosts where others can write to /tmp
and to shared directories. An unprivileged user (a child process switched to 'nobody') prepares links and
look-alike captures in a sticky world-writable directory; root then runs the command. Nothing may be written
through, deleted through or followed along another user's link, and an existing directory that another user
owns or can write to is refused in one line; a new output inside the sticky directory is fine."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from planted import as_other_user, skip_reason, sticky_shared_dir, untouched, victim
from tracegen import Trace, leaf4k, nonleaf

from tdptrace.cli import main

TDPTRACE = [sys.executable, "-m", "tdptrace.cli"]

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")


@pytest.fixture
def shared():
    with sticky_shared_dir() as d:
        yield d


@pytest.fixture
def trace(tmp_path) -> Path:
    f = tmp_path / "t.txt"
    f.write_text(Trace().get_page(0, 1).spte(0, 2, 0, nonleaf(5)).spte(1, 1, 0, leaf4k(1))
                 .enter("tdp_mmu_zap_leafs", "root=0xffff8946134bab80 start=0x0 end=0x200 can_yield=1 flush=0")
                 .spte(1, 1, leaf4k(1), 0).yield_().ret("tdp_mmu_zap_leafs", args="ret=1").text())
    return f


@pytest.fixture
def capture(trace, tmp_path) -> Path:
    cap = tmp_path / "c.tdp"
    assert main(["import", str(trace), "-o", str(cap), "-q"]) == 0
    return cap


def _refused(args: list[str], capsys, *needles: str) -> str:
    capsys.readouterr()
    rc = main(args)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc != 0, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert all(n in err[0] for n in needles), err
    return err[0]


def _modes(root: Path) -> set[tuple[str, int]]:
    out = {("dir", stat.S_IMODE(root.stat().st_mode))}
    for dirpath, dirnames, filenames in os.walk(root):
        out |= {("dir", stat.S_IMODE(os.lstat(os.path.join(dirpath, n)).st_mode)) for n in dirnames}
        out |= {("file", stat.S_IMODE(os.lstat(os.path.join(dirpath, n)).st_mode)) for n in filenames}
    return out


# ---- captures -------------------------------------------------------------------------------------------------

def test_force_into_a_look_alike_capture_deletes_nothing_through_its_links(shared, trace, tmp_path, capsys):
    """The user prepares out.tdp with a meta.json that looks like a capture and a table directory that is a link
    to root's files: --force refuses the directory (it is theirs) and deletes nothing anywhere."""
    files = victim(tmp_path / "victim")
    out = shared / "out.tdp"

    def plant():
        out.mkdir()
        (out / "meta.json").write_text(json.dumps({"format": "tdptrace-capture", "format_version": 1,
                                                   "source": {}}))
        os.symlink(tmp_path / "victim", out / "sptes")
        for pid in range(os.getpid(), os.getpid() + 200):  # the old temporary names, for the next PIDs
            os.symlink(tmp_path / "victim" / "precious-0", out / f".meta.json.tmp{pid}")

    as_other_user(plant)
    line = _refused(["import", str(trace), "-o", str(out), "--force", "-q"], capsys, str(out), "owned by uid")
    assert "refusing" in line
    assert untouched(files)
    assert (out / "sptes").is_symlink() and out.stat().st_uid != 0  # left as the user made it


def test_force_into_a_capture_whose_table_is_a_link_removes_the_link_only(capture, trace, tmp_path):
    """Even in root's own capture, a table directory that is a link is unlinked, never emptied through."""
    files = victim(tmp_path / "victim")
    (capture / "markers").mkdir(exist_ok=True)
    os.rename(capture / "sptes", tmp_path / "old-sptes")
    os.symlink(tmp_path / "victim", capture / "sptes")
    assert main(["import", str(trace), "-o", str(capture), "--force", "-q"]) == 0
    assert untouched(files)
    assert (capture / "sptes").is_dir() and not (capture / "sptes").is_symlink()
    assert _modes(capture) == {("dir", 0o700), ("file", 0o600)}


def test_a_capture_writable_by_others_is_not_replaced(capture, trace, capsys):
    os.chmod(capture, 0o777)
    _refused(["import", str(trace), "-o", str(capture), "--force", "-q"], capsys, "writable by other users")
    assert (capture / "meta.json").is_file()


def test_a_link_in_place_of_the_capture_is_not_replaced(shared, capture, trace, capsys):
    link = shared / "link.tdp"
    as_other_user(lambda: os.symlink(capture, link))
    _refused(["import", str(trace), "-o", str(link), "--force", "-q"], capsys, "symbolic link")
    assert (capture / "meta.json").is_file() and (capture / "sptes").is_dir()


def test_another_users_link_on_the_way_is_not_followed(shared, trace, tmp_path, capsys):
    """-o shared/link/new.tdp where link (the user's) points into root's directory: refused, nothing created."""
    target = tmp_path / "roots-dir"
    target.mkdir()
    as_other_user(lambda: os.symlink(target, shared / "link"))
    _refused(["import", str(trace), "-o", str(shared / "link" / "new.tdp"), "-q"], capsys,
             "symbolic link owned by uid")
    assert list(target.iterdir()) == []


def test_a_new_capture_in_a_sticky_shared_directory_is_fine_and_private(shared, trace):
    out = shared / "mine.tdp"
    p = subprocess.run(TDPTRACE + ["import", str(trace), "-o", str(out), "-q"], capture_output=True, text=True,
                       preexec_fn=lambda: os.umask(0), timeout=120)
    assert p.returncode == 0, p.stderr
    assert out.stat().st_uid == 0
    assert _modes(out) == {("dir", 0o700), ("file", 0o600)}


def test_a_failed_import_never_removes_a_capture_it_did_not_write(capture, trace, capsys):
    """An unfinished capture (a recorder killed half-way) is kept when an import onto it is refused."""
    meta = json.loads((capture / "meta.json").read_text())
    meta["status"] = "recording"
    (capture / "meta.json").write_text(json.dumps(meta))
    _refused(["import", str(trace), "-o", str(capture), "-q"], capsys, "already exists")
    assert (capture / "meta.json").is_file() and (capture / "sptes").is_dir()


# ---- plots and reports ----------------------------------------------------------------------------------------

def test_plot_into_another_users_directory_is_refused(shared, capture, tmp_path, capsys):
    files = victim(tmp_path / "victim")
    figs = shared / "figs"

    def plant():
        figs.mkdir()
        for name in ("zaps_by_level", "gap_distribution", "span_timeline", "retained_tables"):
            os.symlink(tmp_path / "victim" / "precious-0", figs / f"{name}.png")

    as_other_user(plant)
    _refused(["plot", str(capture), "-o", str(figs), "--force"], capsys, str(figs), "owned by uid")
    assert untouched(files)


def test_plot_replaces_a_link_in_its_own_directory_instead_of_writing_through_it(capture, tmp_path, capsys):
    files = victim(tmp_path / "victim")
    figs = tmp_path / "figs"
    figs.mkdir(mode=0o700)
    os.symlink(tmp_path / "victim" / "precious-0", figs / "zaps_by_level.png")
    assert main(["plot", str(capture), "-o", str(figs)]) == 2  # something is there: --force to replace
    assert main(["plot", str(capture), "-o", str(figs), "--force"]) == 0
    assert untouched(files)
    png = figs / "zaps_by_level.png"
    assert not png.is_symlink() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_and_report_outputs_are_private_whatever_the_umask(shared, capture):
    figs, rep = shared / "figs", shared / "r.html"
    for args in (["plot", str(capture), "-o", str(figs)], ["report", str(capture), "-o", str(rep)]):
        p = subprocess.run(TDPTRACE + args, capture_output=True, text=True, preexec_fn=lambda: os.umask(0),
                           timeout=300)
        assert p.returncode == 0, p.stderr
    assert _modes(figs) == {("dir", 0o700), ("file", 0o600)}
    assert stat.S_IMODE(rep.stat().st_mode) == 0o600


def test_report_never_writes_through_planted_temporary_links(shared, capture, tmp_path):
    files = victim(tmp_path / "victim")
    rep = shared / "rep"

    def plant():
        rep.mkdir(mode=0o1777)
        os.chmod(rep, 0o1777)
        for pid in range(os.getpid(), os.getpid() + 300):
            os.symlink(tmp_path / "victim" / "precious-1", rep / f".r.html.tmp{pid}")

    as_other_user(plant)
    p = subprocess.run(TDPTRACE + ["report", str(capture), "-o", str(rep / "r.html")], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert untouched(files)
    out = rep / "r.html"
    assert out.is_file() and not out.is_symlink() and out.stat().st_uid == 0
    assert out.read_text().startswith("<!DOCTYPE html>")


def test_report_over_a_planted_link_replaces_the_link(shared, capture, tmp_path):
    files = victim(tmp_path / "victim")
    out = shared / "r.html"
    as_other_user(lambda: os.symlink(tmp_path / "victim" / "precious-2", out))
    assert main(["report", str(capture), "-o", str(out)]) == 2  # something is there: --force to replace
    assert untouched(files) and out.is_symlink()
    assert main(["report", str(capture), "-o", str(out), "--force"]) == 0
    assert untouched(files) and not out.is_symlink()


# ---- rolling directory ----------------------------------------------------------------------------------------

def _old_capture(d: Path, age_s: float) -> Path:
    d.mkdir(mode=0o700)
    (d / "meta.json").write_text(json.dumps({"format": "tdptrace-capture"}))
    (d / "sptes").mkdir()
    (d / "sptes" / "part-000000.parquet").write_bytes(b"x" * 100)
    t = time.time() - age_s
    os.utime(d, (t, t))
    return d


def test_prune_removes_links_never_their_targets_and_survives(tmp_path):
    from tdptrace.live.rolling import prune

    files = victim(tmp_path / "victim")
    rec = tmp_path / "rec"
    rec.mkdir(mode=0o700)
    old = _old_capture(rec / "old.tdp", 99 * 3600)
    os.symlink(tmp_path / "victim", old / "sptes" / "escape")  # a link inside a capture: unlinked only
    elsewhere = _old_capture(tmp_path / "elsewhere.tdp", 99 * 3600)
    os.symlink(elsewhere, rec / "linked.tdp")  # a link to an old capture: left alone, as is its target
    removed = prune(rec, 48 * 3600, 1 << 30, time.time())
    assert removed == [old]
    assert untouched(files) and elsewhere.is_dir() and (rec / "linked.tdp").is_symlink()


def test_record_dir_owned_by_another_user_is_refused(shared):
    from tdptrace.errors import BadInput
    from tdptrace.live.rolling import CaptureRoller

    rec = shared / "rec"
    as_other_user(lambda: rec.mkdir(mode=0o755))
    with pytest.raises(BadInput, match="owned by uid"):
        CaptureRoller(rec)
    os.chmod(shared, 0o1777)
    rec2 = shared / "rec2"
    rec2.mkdir(mode=0o777)
    os.chmod(rec2, 0o777)
    with pytest.raises(BadInput, match="writable by other users"):
        CaptureRoller(rec2)


def test_the_roller_survives_links_and_junk_in_its_directory(tmp_path):
    """A link to an old capture, a link inside a capture, an unreadable meta.json and a file where a capture
    would be: the roller keeps rolling and pruning, deletes only its own captures and ends cleanly."""
    import sys

    from tdptrace.live.rolling import CaptureRoller

    files = victim(tmp_path / "victim")
    rec = tmp_path / "rec"
    rec.mkdir(mode=0o700)
    elsewhere = _old_capture(tmp_path / "elsewhere.tdp", 99 * 3600)
    os.symlink(elsewhere, rec / "old-link.tdp")
    old = _old_capture(rec / "old.tdp", 99 * 3600)
    os.symlink(tmp_path / "victim", old / "sptes" / "escape")
    (rec / "junk.tdp").mkdir()
    (rec / "junk.tdp" / "meta.json").write_bytes(b"\xff" * 10)
    (rec / "file.tdp").write_text("not a capture")
    script = ("import json,sys,pathlib; p=pathlib.Path(sys.argv[1]); p.mkdir(); "
              "(p/'meta.json').write_text(json.dumps({'format':'tdptrace-capture'})); "
              "(p/'x').write_bytes(b'x'*1000)")
    logs: list[str] = []
    r = CaptureRoller(rec, retain_hours=1, retain_bytes=2500, period_s=1.0, log=logs.append,
                      command_for=lambda path, s: [sys.executable, "-c", script, str(path)])
    r.start()
    deadline = time.monotonic() + 20
    while len(r.captures) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert r._thread.is_alive()
    r.stop()
    assert len(r.captures) >= 3 and r.failures == 0, logs
    assert not old.exists() and untouched(files)
    assert (rec / "old-link.tdp").is_symlink() and (elsewhere / "meta.json").is_file()
    assert (rec / "junk.tdp").is_dir() and (rec / "file.tdp").is_file()


def test_serve_with_a_link_in_the_record_dir_exits_cleanly(tmp_path):
    """The command as a whole: no traceback, exit 0, the link and its target left alone."""
    from livestats import free_port

    rec = tmp_path / "rec"
    rec.mkdir(mode=0o700)
    elsewhere = _old_capture(tmp_path / "elsewhere.tdp", 99 * 3600)
    os.symlink(elsewhere, rec / "old-link.tdp")
    p = subprocess.run(TDPTRACE + ["serve", "--listen", f"127.0.0.1:{free_port()}", "--record-dir", str(rec),
                                   "--roll", "2s", "--duration", "5s"], capture_output=True, text=True,
                       timeout=120)
    assert "Traceback" not in p.stderr, p.stderr
    if p.returncode != 0 and "error:" in p.stderr and ("bcc" in p.stderr or "root" in p.stderr):
        pytest.skip(f"serve cannot run here: {p.stderr.strip()}")
    assert p.returncode == 0, p.stderr
    assert (rec / "old-link.tdp").is_symlink() and (elsewhere / "meta.json").is_file()
