"""``dynaguide calvin same-trials``: two evaluation runs compared trial by trial."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dynaguide_experiments.calvin.reproduce import compare_trial_logs


def _run(directory: Path, trials: list[dict]) -> Path:
    (directory / "trials").mkdir(parents=True)
    with open(directory / "trials" / "switch_on__dynaguide.jsonl", "w") as f:
        for t in trials:
            f.write(json.dumps({"target": "switch_on", "method": "dynaguide", "seconds": 1.0, **t}) + "\n")
    return directory


TRIALS = [{"trial": 0, "seed": 10, "label": "switch_on", "steps": 40, "reversals": 0, "chunk_turns": [0.5],
           "splice_jumps": [0.1]},
          {"trial": 1, "seed": 11, "label": "no_behaviour", "steps": 400, "reversals": 3, "chunk_turns": [-0.2],
           "splice_jumps": [0.3]}]


def test_identical_runs_are_identical_whatever_their_timings(tmp_path):
    a = _run(tmp_path / "a", TRIALS)
    b = _run(tmp_path / "b", [{**t, "seconds": 9.0} for t in reversed(TRIALS)])
    result = compare_trial_logs(a, b)
    assert (result["trials"], result["identical"], result["differences"]) == (2, 2, [])


@pytest.mark.parametrize("field,value", [("label", "switch_off"), ("steps", 41), ("splice_jumps", [0.10001])])
def test_one_changed_field_is_named(tmp_path, field, value):
    a = _run(tmp_path / "a", TRIALS)
    b = _run(tmp_path / "b", [{**TRIALS[0], field: value}, TRIALS[1]])
    result = compare_trial_logs(a, b)
    assert result["identical"] == 1
    assert result["differences"] == [{"target": "switch_on", "method": "dynaguide", "trial": 0, "field": field,
                                      "a": TRIALS[0][field], "b": value}]


def test_the_command_exits_1_on_a_difference_and_on_missing_trials(tmp_path):
    a = _run(tmp_path / "a", TRIALS)
    same = _run(tmp_path / "same", TRIALS)
    fewer = _run(tmp_path / "fewer", TRIALS[:1])

    def code(x, y):
        return subprocess.run([sys.executable, "-m", "dynaguide_cli", "calvin", "same-trials", str(x), str(y)],
                              capture_output=True, text=True).returncode

    assert code(a, same) == 0
    assert code(a, fewer) == 1
    assert code(a, tmp_path / "nothing") == 2      # not an eval directory: one line, exit 2
