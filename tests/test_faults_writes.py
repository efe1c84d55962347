"""Failed writes and killed runs: one line and nothing half-written; no orphaned workers; stale temps cleaned.

Disk full is faked with a patched ``np.save`` (inherited by the fork-started workers), a
read-only folder with ``chmod`` (or, as root, where chmod does not stop writes, with a
patched ``mkstemp``), and a kill with a real ``kill -9`` of a child process (issue 16).
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.io import json_io
from autoseg.io.json_io import atomic_path, remove_stale_temps

from conftest import write_blob_dataset
from test_faults_files import error_lines
from test_predict import make_model, tiny_config, write_case

REPO = Path(__file__).resolve().parents[1]
PLAN = ["plan_and_preprocess", "-d", "Liver", "-c", "3d_fullres"]


@pytest.fixture
def dataset(autoseg_env):
    write_blob_dataset(autoseg_env["raw"] / "Dataset003_Liver", n=4)
    return autoseg_env


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("workers", ["1", "2"])
def test_disk_full_while_preprocessing_is_one_line_and_leaves_nothing_half_written(dataset, monkeypatch, capsys, workers):
    if workers != "1" and multiprocessing.get_start_method() != "fork":
        pytest.skip("the patched np.save reaches pool workers only when they are forked")
    def full_disk(file, arr, *args, **kwargs):
        with open(file, "wb") as f:
            f.write(b"\x93NUMPY half a header")  # some bytes made it, then the disk filled up
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(np, "save", full_disk)  # forked workers inherit the patch
        assert main(PLAN + ["-np", workers]) == 1
    err = capsys.readouterr().err
    lines = error_lines(err)
    pre = dataset["pre"] / "Dataset003_Liver"
    assert len(lines) == 1 and f"{pre}: cannot write (no space left on the disk, [Errno 28]); free space there" in lines[0]
    assert "Traceback" not in err
    files = _files(pre)
    assert not [f for f in files if f.endswith(".npy") or Path(f).name.startswith(".")]  # no case array, no temp
    assert not [f for f in files if f.endswith(".json") and f.count("/") and not f.endswith("configuration.json")]
    assert main(PLAN + ["-np", workers]) == 0  # room again: the re-run finishes every case
    assert len([f for f in _files(pre) if f.endswith("_seg.npy")]) == 4


def _make_read_only(folder: Path, monkeypatch) -> None:
    """chmod 555 ``folder``; as root (chmod does not stop writes) make temp-file creation there fail like EROFS."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    try:
        fd, probe = tempfile.mkstemp(dir=folder)
    except PermissionError:
        return
    os.close(fd)
    os.unlink(probe)
    real = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and (Path(dir) == folder or folder in Path(dir).parents):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(Path(dir) / ".x.host-1-abcdefgh.tmp"))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(json_io.tempfile, "mkstemp", read_only)


def test_read_only_preprocessed_folder_is_one_line(dataset, monkeypatch, capsys):
    pre = dataset["pre"] / "Dataset003_Liver"
    _make_read_only(pre, monkeypatch)
    try:
        assert main(PLAN + ["-np", "1"]) == 1
    finally:
        pre.chmod(0o755)
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1 and str(pre) in lines[0] and "make it writable or set AUTOSEG_PREPROCESSED" in lines[0]
    assert ("read-only" in lines[0] or "permission denied" in lines[0]) and "Traceback" not in err
    assert _files(pre) == []


def test_read_only_predict_output_is_one_line(autoseg_env, tmp_path, monkeypatch, capsys):
    make_model(autoseg_env["res"], {"3d_fullres": tiny_config("3d_fullres", [2.5, 1.0, 1.0], [8, 8, 8])})
    write_case(tmp_path / "in" / "a_0000.nii.gz", shape=(8, 12, 12))
    out = tmp_path / "out"
    _make_read_only(out, monkeypatch)
    try:
        assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(out), "--device", "cpu", "--no-tta"]) == 1
    finally:
        out.chmod(0o755)
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"{out}: cannot write" in lines[0] and "pass another -o" in lines[0]


def test_remove_stale_temps_keeps_live_writers_and_other_files(tmp_path):
    host, dead, live = json_io._host(), _dead_pid(), os.getpid()
    names = [f".case_000.npy.{host}-{dead}-abcd_123.tmp.npy",  # 0: killed writer on this machine
             f".case_000.npy.{host}-{live}-zzzz9999.tmp.npy",  # 1: live writer
             ".old.pth.k2j3h4g5.tmp", ".recent.pth.q1w2e3r4.tmp",  # 2, 3: no owner (older autoseg): old / recent
             f".mask.nii.gz.{host}-{dead}-abcdefgh.tmp.nii.gz",  # 4: killed writer on this machine
             f".mask.nii.gz.other-node-7-{dead}-abcdefgh.tmp.nii.gz",  # 5: another machine's writer (shared folder)
             f".old.nii.gz.other-node-7-{dead}-abcdefgh.tmp.nii.gz",  # 6: another machine's, an hour old
             "case_000.npy", ".hidden", "a.tmp"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    old = time.time() - 2 * json_io.UNOWNED_TEMP_AGE_S
    for i in (2, 6):
        os.utime(tmp_path / names[i], (old, old))
    removed = sorted(p.name for p in remove_stale_temps(tmp_path))
    assert removed == sorted(names[i] for i in (0, 2, 4, 6))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(names) - set(removed))
    assert remove_stale_temps(tmp_path / "missing") == []
    with atomic_path(tmp_path / "b.json") as tmp:  # our own temps carry our host and pid
        assert Path(tmp).name.startswith(f".b.json.{host}-{live}-") and remove_stale_temps(tmp_path) == []


def test_preprocessing_and_predict_clean_stale_temps_on_start(dataset, tmp_path):
    assert main(PLAN + ["-np", "1"]) == 0
    pre = dataset["pre"] / "Dataset003_Liver"
    case_dir = next(p for p in pre.iterdir() if p.is_dir())
    dead = _dead_pid()
    owner = f"{json_io._host()}-{dead}"
    stale = [case_dir / f".case_000.npy.{owner}-abcdefgh.tmp.npy", pre / f".plans.json.{owner}-abcdefgh.tmp"]
    for p in stale:
        p.write_bytes(b"left by kill -9")
    assert main(PLAN + ["-np", "1"]) == 0
    assert not any(p.exists() for p in stale)

    make_model(dataset["res"], {"3d_fullres": tiny_config("3d_fullres", [2.5, 1.0, 1.0], [8, 8, 8])})
    write_case(tmp_path / "in" / "a_0000.nii.gz", shape=(8, 12, 12))
    out = tmp_path / "out"
    (out / "uncertainty").mkdir(parents=True)
    stale = [out / f".a.nii.gz.{owner}-abcdefgh.tmp.nii.gz", out / "uncertainty" / f".a_entropy.nii.gz.{owner}-abcdefgh.tmp.nii.gz"]
    for p in stale:
        p.write_bytes(b"left by kill -9")
    assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(out), "--device", "cpu", "--no-tta"]) == 0
    assert not any(p.exists() for p in stale) and (out / "a.nii.gz").is_file()


def _proc_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, start time) from /proc (psutil is not a dependency)."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(d.name)] = (int(fields[1]), fields[0], fields[19])
    return out


def _descendants(root: int) -> dict[int, str]:
    table, found, todo = _proc_table(), {}, [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, _, start) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = start
                todo.append(pid)
    return found


def _running(pid: int, start: str) -> bool:
    info = _proc_table().get(pid)
    return info is not None and info[2] == start and info[1] not in "ZX"  # same process, not a zombie


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc (Linux)")
def test_kill_9_of_plan_and_preprocess_leaves_no_worker_running(autoseg_env):
    write_blob_dataset(autoseg_env["raw"] / "Dataset003_Liver", n=14, shape=(40, 72, 72), spacing=(2.0, 1.0, 1.0))
    child = subprocess.Popen([sys.executable, "-m", "autoseg"] + PLAN + ["-np", "2"], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pre = autoseg_env["pre"] / "Dataset003_Liver"
    try:
        deadline = time.time() + 300
        while not list(pre.glob("*/case_*.json")):  # preprocessing workers are writing cases
            assert child.poll() is None and time.time() < deadline, "plan_and_preprocess ended before it could be killed"
            time.sleep(0.01)
        workers = _descendants(child.pid)
        assert child.poll() is None and workers, "no worker processes to watch"
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        deadline = time.time() + 20
        while any(_running(p, s) for p, s in workers.items()) and time.time() < deadline:
            time.sleep(0.1)
        left = [p for p, s in workers.items() if _running(p, s)]
    finally:
        if child.poll() is None:
            child.kill()
    for p in left:  # clean up before failing
        os.kill(p, signal.SIGKILL)
    assert left == [], f"worker(s) {left} kept running after their parent was killed"
    done = len(list(pre.glob("*/case_*.json")))
    time.sleep(1.0)
    assert len(list(pre.glob("*/case_*.json"))) == done < 14  # nothing writes cases any more


FALLBACK_CHILD = """
import multiprocessing, os, sys, time
from autoseg.io import workers
workers.sys.platform = "other"  # no prctl: only the parent_gone() fallback can stop the worker

def loop():
    workers.die_with_parent()
    while not workers.parent_gone():
        time.sleep(0.02)
    os._exit(0)

p = multiprocessing.get_context("fork").Process(target=loop)
p.start()
print(p.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc (Linux)")
def test_worker_without_prctl_notices_its_parent_is_gone():
    child = subprocess.Popen([sys.executable, "-c", FALLBACK_CHILD], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        worker = int(child.stdout.readline())
        start = _proc_table()[worker][2]
        time.sleep(0.2)
        assert _running(worker, start)  # waits while its parent lives
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        deadline = time.time() + 10
        while _running(worker, start) and time.time() < deadline:
            time.sleep(0.05)
        alive = _running(worker, start)
    finally:
        if child.poll() is None:
            child.kill()
    if alive:
        os.kill(worker, signal.SIGKILL)
    assert not alive, "the worker did not notice that its parent was killed"
