"""``dynaguide calvin`` options that must not be silently ignored."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _calvin(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dynaguide_cli", "calvin", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("extra", [[], ["--split", "validation", "--trials", "3"],
                                   ["--split", "validation", "--policy", "checkpoints/calvin_play_9k/policy"]])
def test_ablation_with_a_protocol_runs_on_validation_seeds_with_the_protocols_settings_only(extra, tmp_path):
    proc = _calvin("ablation", "--protocol", "results/calvin/protocol.json", *extra, "--out", str(tmp_path / "a"))
    assert proc.returncode != 0 and "run it with --split validation" in proc.stderr, proc.stderr
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("extra, message", [
    ([], "registers experiments"),                         # the ArticulatedParts protocol has no underrepresented
    (["--trials", "3"], "drop --trials"),
    (["--shares", "0.01@x"], "--shares: a share is SHARE, SHARE@SEED"),
])
def test_underrepresented_applies_a_protocol_or_refuses_it_in_one_line(extra, message, tmp_path):
    proc = _calvin("underrepresented", "--protocol", "results/calvin/protocol.json", *extra,
                   "--out", str(tmp_path / "u"))
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "u").exists()


@pytest.mark.parametrize("extra, message", [
    (["--model", "policy=checkpoints/calvin_play/policy"], "--model wants a new NAME=DIR"),
    (["--model", "gc_policy"], "--model wants a new NAME=DIR"),
    (["--settings-from", "results/calvin/protocol.json", "--scale", "3"], "drop the guidance/trial options"),
    (["--settings-from", "README.md"], "cannot read protocol README.md"),
])
def test_protocol_refuses_a_bad_registration_in_one_line_and_writes_nothing(extra, message, tmp_path):
    proc = _calvin("protocol", "--config", "config/calvin_play_gripper.yaml", "--out", str(tmp_path / "p.json"),
                   "--policy", "checkpoints/calvin_play_gripper/policy", "--dynamics",
                   "checkpoints/calvin_play_gripper/dynamics", *extra)
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "p.json").exists()
