"""The examples run as written: a user copying them gets what they print."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import DATA_ROOT, REPO, needs_data


@needs_data
def test_the_quickstart_trains_predicts_evaluates_and_answers_a_deletion_request(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "examples" / "quickstart.py"), str(tmp_path / "out"), "--data", str(DATA_ROOT)],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("trained: ") and sum(line.startswith("predicted ") for line in lines) == 2
    assert any(line.startswith("test UAR ") and "on 22 utterances" in line for line in lines)
    assert lines[-1].startswith("forgot 4 utterances") and (tmp_path / "out" / "forget-02" / "receipt.json").is_file()
