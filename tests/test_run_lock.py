"""Two resumable runs into one output folder: the second is refused with one line; a dead run's lock is taken over."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cellduality.errors import CellDualityError
from cellduality.outputs import LOCK, claim_resumable_dir, foreign_entries, has_content, write_marker


def test_a_live_run_holding_the_folder_refuses_a_second_one(tmp_path):
    out = tmp_path / "qs"
    out.mkdir()
    write_marker(out, "quickstart")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK).write_text(str(holder.pid))
        with pytest.raises(CellDualityError, match=rf"being written by another `cellduality quickstart` run \(process {holder.pid}\)"):
            claim_resumable_dir(out, "quickstart")
        assert (out / LOCK).read_text() == str(holder.pid)  # the other run's lock is left alone
    finally:
        holder.kill()
        holder.wait()
    claim_resumable_dir(out, "quickstart")  # its process is gone: the stale lock is taken over
    assert (out / LOCK).read_text() == str(os.getpid())
    claim_resumable_dir(out, "quickstart")  # the same process may claim again (quickstart --fresh does)


def test_the_lock_is_neither_content_nor_foreign(tmp_path):
    out = tmp_path / "qs"
    claim_resumable_dir(out, "quickstart")
    assert (out / LOCK).is_file() and not has_content(out) and foreign_entries(out) == []


def test_the_lock_is_released_when_the_run_ends(tmp_path):
    out = tmp_path / "qs"
    code = ("from cellduality.outputs import claim_resumable_dir; import sys; "
            f"claim_resumable_dir(sys.argv[1], 'quickstart'); print(open(sys.argv[1] + '/{LOCK}').read())")
    done = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=True)
    assert done.stdout.strip().isdigit() and not (out / LOCK).exists()
