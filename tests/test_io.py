"""Outputs whole or not at all, never replacing what a user or another run has there."""

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serkit.errors import SerkitError
from serkit.io import OutputDir, atomic_dir, atomic_file


def _is_ours(path):
    return (path / "ours.txt").is_file()


def test_an_output_dir_appears_whole_and_leaves_no_working_files(tmp_path):
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("a")
        assert not (tmp_path / "out").exists() and (tmp_path / ".out.lock").exists()
    assert (tmp_path / "out" / "a.txt").read_text() == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(SerkitError, match="already exists; serkit never overwrites"):
        with atomic_dir(tmp_path / "out"):
            pass
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "failed") as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_replaces_only_outputs_it_recognises_and_clears_stale_leftovers(tmp_path):
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "thesis.tex").write_text("years of work")
    with pytest.raises(SerkitError, match="is not a serkit output of this kind, so --overwrite will not delete it"):
        with atomic_dir(tmp_path / "theirs", overwrite=True, recognise=_is_ours):
            pass
    assert (tmp_path / "theirs" / "thesis.tex").is_file()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "ours.txt").write_text("old")
    (tmp_path / ".mine.x1y2z3w4.partial").mkdir()  # a killed run's working folder
    (tmp_path / ".mine.old").mkdir()  # the fixed-name leftover of older serkit versions
    (tmp_path / ".mine.k3k3k3k3.old").mkdir()
    (tmp_path / ".mine.v2.a1b2c3d4.partial").mkdir()  # the live working folder of another output, "mine.v2"
    with atomic_dir(tmp_path / "mine", overwrite=True, recognise=_is_ours) as tmp:
        (tmp / "ours.txt").write_text("new")
    assert (tmp_path / "mine" / "ours.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".mine.v2.a1b2c3d4.partial", "mine", "theirs"]


def test_an_output_a_crash_left_half_replaced_is_put_back(tmp_path):
    (tmp_path / ".out.q1w2e3r4.old" / "previous").mkdir(parents=True)  # died between its two renames
    (tmp_path / ".out.q1w2e3r4.old" / "previous" / "ours.txt").write_text("the old result")
    with pytest.raises(SerkitError, match="already exists"):
        with atomic_dir(tmp_path / "out"):
            pass
    assert (tmp_path / "out" / "ours.txt").read_text() == "the old result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_working_folder_is_private_until_it_is_committed(tmp_path):
    with atomic_dir(tmp_path / "out") as tmp:
        assert os.stat(tmp).st_mode & 0o077 == 0
    assert os.stat(tmp_path / "out").st_mode & 0o077 != 0


def test_an_output_that_appears_meanwhile_is_not_replaced(tmp_path):
    with pytest.raises(SerkitError, match="appeared while this run was working; nothing was replaced"):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "mine.txt").write_text("mine")
            (tmp_path / "out").mkdir()  # an empty folder: plain rename(2) would silently replace it
    assert list((tmp_path / "out").iterdir()) == []


def test_a_second_run_on_the_same_output_fails_at_once(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom serkit.io import OutputDir\n"
        f"with OutputDir({str(tmp_path / 'out')!r}) as out:\n"
        "    out.staging(); print('holding', flush=True); time.sleep(30)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        start = time.perf_counter()
        with pytest.raises(SerkitError, match="another serkit run is writing output .*out right now"):
            with OutputDir(tmp_path / "out"):
                pass
        assert time.perf_counter() - start < 5
    finally:
        holder.kill()
        holder.wait()
    with atomic_dir(tmp_path / "out") as tmp:  # the killed run's lock died with it; its working folder is cleared
        (tmp / "x").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_unwritable_folder_is_named_before_any_work(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(SerkitError, match="cannot write output .*file/out: .*file is not a writable folder"):
        with OutputDir(tmp_path / "file" / "out"):
            pass
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    try:
        if not os.access(locked, os.W_OK):  # root may write anywhere; others are told
            with pytest.raises(SerkitError, match="cannot write output .*locked/out: .*locked is not a writable folder"):
                with OutputDir(locked / "sub" / "out"):
                    pass
    finally:
        os.chmod(locked, 0o700)


def test_a_file_that_cannot_be_written_is_named_before_any_work(tmp_path):
    from serkit.io import check_new_file, write_json

    (tmp_path / "file").write_text("not a folder")
    for path in (tmp_path / "file" / "x.json", Path("/proc/serkit-x.json")):  # /proc: root passes os.access there
        with pytest.raises(SerkitError, match=f"cannot write split file {path}: .* is not a writable folder; choose another"):
            check_new_file(path, "split file")
        with pytest.raises(SerkitError, match=f"cannot write output {path}: "):
            write_json(path, {})
    with pytest.raises(SerkitError, match="cannot write output .*: /proc is not a writable folder"):
        with OutputDir("/proc/serkit-out"):
            pass


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_names_the_output_and_leaves_nothing(tmp_path):
    from serkit.errors import DiskFullError
    from serkit.io import write_json

    with pytest.raises(DiskFullError, match=f"^no space left on device while writing output {tmp_path / 'a.json'}; nothing was"):
        with atomic_file(tmp_path / "a.json") as handle:
            handle.write("{")
            _full_disk()
    with pytest.raises(DiskFullError, match=f"^no space left on device while writing run {tmp_path / 'run'};"):
        with atomic_dir(tmp_path / "run", what="run") as tmp:  # the run is named, not the file inside it
            write_json(tmp / "ok.json", {})
            with atomic_file(tmp / "metrics.json") as handle:
                _full_disk()
    assert list(tmp_path.iterdir()) == []
