"""The guidance store: corrupt files are refused without losing the revision, writes replace atomically,
the previous layout still loads, and a clear is recorded so revisions never repeat."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


def _stored(rev: int, seed: int = 0):
    from dynaguide.guidance.store import StoredGuidance

    rng = np.random.default_rng(seed)
    return StoredGuidance(rng.standard_normal((2, 4, 3)).astype(np.float32), np.zeros((0, 4, 3), np.float32),
                          (2, 2), "random:abc", 1.5, 30.0, 4, rev)


def _corrupt_tensors(d: Path) -> None:
    name = json.loads((d / "guidance.json").read_text())["tensors"]
    (d / name).write_bytes(b"\xff" * 64)


def _truncate_tensors(d: Path) -> None:
    name = json.loads((d / "guidance.json").read_text())["tensors"]
    data = (d / name).read_bytes()
    (d / name).write_bytes(data[: len(data) // 2])


def _corrupt_json(d: Path) -> None:
    (d / "guidance.json").write_text("{not json")


def _delete_tensors(d: Path) -> None:
    for f in d.glob("guidance*.safetensors"):
        f.unlink()


@pytest.mark.parametrize("corrupt", [_corrupt_tensors, _truncate_tensors, _corrupt_json, _delete_tensors],
                         ids=["garbage_safetensors", "truncated_safetensors", "garbage_json", "missing_tensors"])
def test_corrupt_store_raises_value_error_and_keeps_the_revision(tmp_path, corrupt):
    from dynaguide.guidance.store import load_guidance, save_guidance, stored_revision

    save_guidance(tmp_path, _stored(7))
    corrupt(tmp_path)
    with pytest.raises(ValueError, match="unreadable"):  # SafetensorError is no ValueError: wrapped
        load_guidance(tmp_path)
    assert stored_revision(tmp_path) == 7                 # from the JSON, or the tensor file's name


def test_store_replaces_atomically_and_leaves_one_consistent_pair(tmp_path):
    from dynaguide.guidance.store import load_guidance, save_guidance

    for rev in (1, 2, 3):
        save_guidance(tmp_path, _stored(rev, seed=rev))
    files = sorted(f.name for f in tmp_path.iterdir())
    assert files[0] == "guidance-r3-" + files[0].split("-", 2)[2] and files[1:] == ["guidance.json"], files
    back = load_guidance(tmp_path)
    assert back.revision == 3 and np.array_equal(back.positive, _stored(3, seed=3).positive)
    meta = json.loads((tmp_path / "guidance.json").read_text())
    assert meta["tensors"] == files[0] and len(meta["sha256"]) == 64


def test_store_reads_the_previous_layout(tmp_path):
    """Stores written before the tensor file was named in the JSON (guidance.safetensors) still load."""
    from safetensors.numpy import save_file

    from dynaguide.guidance.store import load_guidance

    g = _stored(5)
    save_file({"positive": g.positive, "negative": g.negative}, str(tmp_path / "guidance.safetensors"))
    (tmp_path / "guidance.json").write_text(json.dumps({"grid_hw": [2, 2], "embedder_id": "random:abc",
                                                        "scale": 1.5, "sigma": 30.0, "stochastic_steps": 4,
                                                        "revision": 5}))
    assert load_guidance(tmp_path).revision == 5


def test_clear_is_recorded_so_revisions_never_repeat(tmp_path):
    from dynaguide.guidance.store import clear_guidance, load_guidance, save_guidance, stored_revision

    save_guidance(tmp_path, _stored(4))
    clear_guidance(tmp_path, revision=5)
    assert load_guidance(tmp_path) is None
    assert stored_revision(tmp_path) == 5
    assert not list(tmp_path.glob("*.safetensors"))
