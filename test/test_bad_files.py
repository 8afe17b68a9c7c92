"""Files and command lines users hand us: refused with one clear line, inputs never modified, memory bounded.

Every case is a tiny generated file (or a command line) given to the real reader or to ``dynaguide`` itself;
each asserts the exit status / exception, the one-line message naming the problem, that the input is
unchanged and (where a file declares a huge size) that the reader stays within a few hundred MB — such cases
run in a subprocess under ``resource.setrlimit(RLIMIT_AS)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_cli(capsys, *args: str) -> tuple[int, str]:
    """``dynaguide ARGS`` in this process → (exit status, stderr)."""
    from dynaguide_cli.main import main

    capsys.readouterr()  # what the test's own setup printed
    code = main(list(args))
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def run_limited(code: str, memory_mb: int = 2500, timeout: float = 120) -> subprocess.CompletedProcess:
    """Python ``code`` in a subprocess whose address space is capped at ``memory_mb`` (torch alone maps ~1.5 GB
    of virtual memory; the cases here ask for tens of GB to TB)."""
    prelude = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, ({memory_mb} * 2**20, {memory_mb} * 2**20))
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"))


# ------------------------------------------------------------------------------------------------- outputs
@pytest.fixture
def junk_recording(tmp_path) -> Path:
    path = tmp_path / "rec.mcap"
    path.write_bytes(b"hello\n")  # a 6-byte text file
    return path


def test_from_mcap_refuses_out_equal_to_its_input(capsys, junk_recording):
    before = digest(junk_recording)
    for out in (junk_recording, junk_recording.parent / "." / junk_recording.name):
        code, err = run_cli(capsys, "dataset", "from-mcap", str(junk_recording), "--out", str(out), "--overwrite")
        assert_one_line_error(code, err, "--out", "is the input")
    assert digest(junk_recording) == before


def test_from_mcap_refuses_an_existing_out_without_overwrite(capsys, tmp_path, junk_recording):
    out = tmp_path / "data.h5"
    out.write_bytes(b"the user's earlier dataset")
    code, err = run_cli(capsys, "dataset", "from-mcap", str(junk_recording), "--out", str(out))
    assert_one_line_error(code, err, "exists", "--overwrite")
    assert out.read_bytes() == b"the user's earlier dataset"


def test_from_mcap_on_a_text_file_is_one_line_and_leaves_nothing(capsys, tmp_path, junk_recording):
    out = tmp_path / "data.h5"
    code, err = run_cli(capsys, "dataset", "from-mcap", str(junk_recording), "--out", str(out))
    assert code == 2 and "not a readable MCAP file" in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.mcap"]


def test_atomic_output_removes_its_temp_file_on_an_error(tmp_path):
    from dynaguide.inputs import atomic_output

    out = tmp_path / "out.h5"
    with pytest.raises(RuntimeError), atomic_output(out) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("conversion failed")
    with pytest.raises(KeyboardInterrupt), atomic_output(out) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with atomic_output(out) as tmp:
        tmp.write_bytes(b"whole")
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"] and out.read_bytes() == b"whole"


WRITER = """
    import sys, time
    from pathlib import Path
    from dynaguide.inputs import atomic_output
    with atomic_output(Path(sys.argv[1])) as tmp:
        tmp.write_bytes(b"x" * 1000)
        print("writing", flush=True)
        time.sleep(60)
"""


def _start_writer(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), str(out)], stdout=subprocess.PIPE,
                            text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def test_sigterm_while_writing_removes_the_temp_file(tmp_path):
    out = tmp_path / "cache.emb.h5"
    proc = _start_writer(out)
    assert len(list(tmp_path.iterdir())) == 1  # the temp file
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_a_killed_writers_temp_file_is_removed_by_the_next_run(tmp_path):
    from dynaguide.inputs import atomic_output

    out = tmp_path / "cache.emb.h5"
    proc = _start_writer(out)
    proc.kill()  # SIGKILL: nothing can clean up
    proc.wait(timeout=30)
    (stale,) = tmp_path.iterdir()
    assert str(proc.pid) in stale.name
    legacy = tmp_path / f"cache.emb.h5.tmp-{proc.pid}"  # the name earlier versions used
    legacy.write_bytes(b"23 MB of tokens")
    live = tmp_path / f".cache.emb.h5.tmp-{os.getppid()}"  # a writer that still runs is left alone
    live.write_bytes(b"in progress")
    with atomic_output(out) as tmp:
        tmp.write_bytes(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["cache.emb.h5", live.name])


def test_embedding_cache_build_leaves_no_temp_file_next_to_the_dataset(tmp_path):
    from dynaguide.data.embedding_cache import build_embedding_cache
    from dynaguide.data.schema import Demo
    from dynaguide.data.writer import write_hdf5_dataset
    from dynaguide.embedders.factory import EmbedderConfig, make_embedder

    rng = np.random.default_rng(0)
    demos = [Demo(actions=rng.normal(size=(5, 2)), images={"rgb": rng.integers(0, 255, (5, 28, 28, 3), np.uint8)},
                  proprio=np.zeros((5, 1)))]
    data = write_hdf5_dataset(tmp_path / "d.h5", demos)
    emb = make_embedder(EmbedderConfig(kind="random", image_size=28, patch_size=14, dim=8))
    cache = build_embedding_cache(data, emb, "rgb", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["d.h5", cache.path.name])
    cache.close()


# ------------------------------------------------------------------------------------------ guidance store
def _saved_store(directory: Path, revision: int = 7) -> None:
    from dynaguide.guidance.store import StoredGuidance, save_guidance

    rng = np.random.default_rng(0)
    save_guidance(directory, StoredGuidance(rng.standard_normal((2, 4, 3)).astype(np.float32),
                                            np.zeros((0, 4, 3), np.float32), (2, 2), "random:abc", 1.5, 30.0, 4,
                                            revision))


def _edit_meta(**changes):
    def edit(d: Path) -> None:
        meta = json.loads((d / "guidance.json").read_text())
        for key, value in changes.items():
            if value is _DELETE:
                del meta[key]
            else:
                meta[key] = value
        (d / "guidance.json").write_text(json.dumps(meta))  # NaN is written as the JSON extension NaN
    return edit


_DELETE = object()


def _replace_tensors(positive: np.ndarray):
    """New tensors with a consistent checksum: only the content is wrong."""
    def edit(d: Path) -> None:
        from safetensors.numpy import save

        meta = json.loads((d / "guidance.json").read_text())
        data = save({"positive": positive, "negative": np.zeros((0,) + positive.shape[1:], positive.dtype)})
        (d / meta["tensors"]).write_bytes(data)
        meta["sha256"] = hashlib.sha256(data).hexdigest()
        (d / "guidance.json").write_text(json.dumps(meta))
    return edit


BAD_STORES = {
    "revision_negative": (_edit_meta(revision=-7), "revision -7 is outside"),
    "revision_1e30": (_edit_meta(revision=1e30), "is not an integer"),
    "revision_huge_int": (_edit_meta(revision=10**30), "is outside"),
    "grid_not_matching_tensors": (_edit_meta(grid_hw=[3, 3]), "do not match grid_hw"),
    "grid_negative": (_edit_meta(grid_hw=[-2, -2]), "grid_hw"),
    "sha256_deleted": (_edit_meta(sha256=_DELETE), "no sha256"),
    "scale_nan": (_edit_meta(scale=float("nan")), "scale"),
    "sigma_zero": (_edit_meta(sigma=0.0), "sigma"),
    "stochastic_steps_float": (_edit_meta(stochastic_steps=2.5), "stochastic_steps"),
    "active_string": (_edit_meta(active="false"), "'active' is 'false'"),
    "tensors_nan": (_replace_tensors(np.full((2, 4, 3), np.nan, np.float32)), "NaN"),
    "tensors_float64": (_replace_tensors(np.zeros((2, 4, 3), np.float64)), "float32"),
    "tensor_name_traversal": (_edit_meta(tensors="../elsewhere.safetensors"), "not a plain file name"),
}


@pytest.mark.parametrize("case", sorted(BAD_STORES))
def test_a_corrupt_guidance_store_is_refused_with_the_reason(tmp_path, case):
    from dynaguide.guidance.store import load_guidance, quarantine_store, stored_revision

    corrupt, reason = BAD_STORES[case]
    _saved_store(tmp_path, revision=7)
    corrupt(tmp_path)
    with pytest.raises(ValueError, match="unreadable") as info:
        load_guidance(tmp_path)
    message = str(info.value)
    assert reason in message and "\n" not in message, message
    rev = stored_revision(tmp_path)
    assert rev == 7  # from the tensor file's name when the JSON's revision is unusable
    files = sorted(p.name for p in tmp_path.iterdir())
    aside = quarantine_store(tmp_path, rev)
    assert sorted(p.name for p in aside.iterdir()) == files  # kept for inspection
    assert load_guidance(tmp_path) is None and stored_revision(tmp_path) == 7  # cleared, revisions go on


def test_a_symlinked_guidance_tensor_file_is_refused(tmp_path):
    from dynaguide.guidance.store import load_guidance

    _saved_store(tmp_path)
    meta = json.loads((tmp_path / "guidance.json").read_text())
    real = tmp_path / meta["tensors"]
    outside = tmp_path.parent / f"{tmp_path.name}-outside.safetensors"
    real.rename(outside)
    real.symlink_to(outside)
    with pytest.raises(ValueError, match="not a regular file"):
        load_guidance(tmp_path)


# ------------------------------------------------------------------------------------- checkpoints
def _edit_checkpoint_config(**changes):
    def edit(d: Path) -> None:
        meta = json.loads((d / "config.json").read_text())
        meta["config"].update(changes)
        (d / "config.json").write_text(json.dumps(meta))
    return edit


def _rewrite_weights(transform):
    def edit(d: Path) -> None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(d / "model.safetensors"))
        save_file({k: transform(v) for k, v in tensors.items()}, str(d / "model.safetensors"))
    return edit


BAD_CHECKPOINTS = {  # case -> (how the small dynamics checkpoint is damaged, what the error must say)
    "n_layers_100000": (_edit_checkpoint_config(n_layers=100000), "n_layers must be a number in [1, 128]"),
    "model_dim_1e6_float": (_edit_checkpoint_config(model_dim=1e6), "model_dim: expected an integer"),
    "model_dim_1000000": (_edit_checkpoint_config(model_dim=1000000), "model_dim must be a number in [1, 16384]"),
    "sizes_in_range_but_huge_together": (_edit_checkpoint_config(model_dim=16384, n_layers=128, n_heads=16),
                                         "over the limit of"),
    "config_not_matching_weights": (_edit_checkpoint_config(model_dim=64), "not one checkpoint"),
    "n_heads_0": (_edit_checkpoint_config(n_heads=0), "n_heads must be a number"),
    "dropout_nan": (_edit_checkpoint_config(dropout=float("nan")), "dropout must be a number"),
    "geometric_p_5": (_edit_checkpoint_config(geometric_p=5), "geometric_p must be a number in [0, 1]"),
    "weights_all_nan": (_rewrite_weights(lambda t: torch_full_like(t, float("nan"))), "NaN or infinite"),
    "weights_int64": (_rewrite_weights(lambda t: t.to(torch_int64())), "is I64 but the model's is torch.float32"),
    "config_json_garbage": (lambda d: (d / "config.json").write_text("{\"format\": "), "is not valid JSON"),
}


def torch_full_like(t, value):
    import torch

    return torch.full_like(t, value) if t.is_floating_point() else t


def torch_int64():
    import torch

    return torch.int64


@pytest.fixture(scope="module")
def checkpoint_results(tmp_path_factory) -> dict[str, dict]:
    """Every bad checkpoint loaded in ONE subprocess under a 3 GB address-space cap (torch itself maps ~1.5 GB):
    case -> {"error": type, "message": str, "unchanged": bool}."""
    from dynaguide.checkpoint import save_checkpoint
    from dynaguide.dynamics import LatentDynamicsConfig, LatentDynamicsModel

    root = tmp_path_factory.mktemp("checkpoints")
    cfg = LatentDynamicsConfig(embed_tokens=16, embed_dim=8, model_dim=32, n_layers=1, n_heads=2, ff_mult=2,
                               proprio_dim=2, action_dim=2, horizon=16)
    digests = {}
    for case, (damage, _) in BAD_CHECKPOINTS.items():
        save_checkpoint(root / case, LatentDynamicsModel(cfg), cfg)
        damage(root / case)
        digests[case] = {f.name: digest(f) for f in (root / case).iterdir()}
    result = run_limited(f"""
        import json
        from pathlib import Path
        from dynaguide.checkpoint import load_checkpoint
        out = {{}}
        for case in {sorted(BAD_CHECKPOINTS)!r}:
            try:
                load_checkpoint(Path({str(root)!r}) / case)
                out[case] = {{"error": None, "message": "loaded"}}
            except BaseException as exc:
                out[case] = {{"error": type(exc).__name__, "message": str(exc)}}
        print(json.dumps(out))
    """, memory_mb=3000, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for case in out:
        out[case]["unchanged"] = digests[case] == {f.name: digest(f) for f in (root / case).iterdir()}
    return out


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_a_bad_checkpoint_is_refused_before_allocating(checkpoint_results, case):
    got = checkpoint_results[case]
    assert got["error"] in ("InputError", "ConfigError", "ValueError"), got  # not MemoryError, not loaded
    assert BAD_CHECKPOINTS[case][1] in got["message"] and "\n" not in got["message"], got["message"]
    assert got["unchanged"]


# --------------------------------------------------------------------------------------------- HDF5 data
def _h5(path: Path, actions=None, images=None, proprio=None, **create) -> None:
    """A file in our layout with one demo; ``create`` maps dataset paths to ``create_dataset`` kwargs (declared
    shapes without data)."""
    import h5py

    with h5py.File(path, "w") as f:
        g = f.create_group("data/demo_0")
        obs = g.create_group("obs")
        if actions is not None:
            g["actions"] = actions
        if images is not None:
            obs["rgb"] = images
        if proprio is not None:
            obs["proprio"] = proprio
        for name, kwargs in create.items():
            f.create_dataset(name, **kwargs)


_RNG = np.random.default_rng(0)
_ACTIONS = _RNG.normal(size=(6, 2)).astype(np.float32)
_IMAGES = _RNG.integers(0, 255, (6, 28, 28, 3), dtype=np.uint8)
_PROPRIO = np.zeros((6, 1), np.float32)

BAD_HDF5 = {  # case -> (writer of the file, what the one-line error must say)
    "actions_declared_2e9_by_7": (lambda p: _h5(p, images=_IMAGES, proprio=_PROPRIO, **{
        "data/demo_0/actions": dict(shape=(2_000_000_000, 7), dtype="f4")}), "over the 2.0 GiB read at once"),
    "actions_declared_1e7_rows_never_written": (lambda p: _h5(p, images=_IMAGES, proprio=_PROPRIO, **{
        "data/demo_0/actions": dict(shape=(10_000_000, 7), dtype="f4", chunks=(1000, 7), compression="gzip")}),
        "stores only 0 bytes"),
    "images_declared_huge_never_written": (lambda p: _h5(p, actions=np.zeros((100_000, 2), np.float32), **{
        "data/demo_0/obs/rgb": dict(shape=(100_000, 512, 512, 3), dtype="u1", chunks=(1, 512, 512, 3),
                                    compression="gzip")}), "stores only 0 bytes"),
    "actions_1d": (lambda p: _h5(p, actions=np.zeros(6, np.float32), images=_IMAGES), "must have 2 dimensions"),
    "actions_strings": (lambda p: _h5(p, actions=np.array([b"a"] * 6), images=_IMAGES), "not numbers"),
    "actions_nan": (lambda p: _h5(p, actions=np.full((6, 2), np.nan, np.float32), images=_IMAGES),
                    "NaN or infinite"),
    "images_shorter_than_actions": (lambda p: _h5(p, actions=_ACTIONS, images=_IMAGES[:3], proprio=_PROPRIO),
                                    "has 3 frames but the demo has 6 actions"),
    "images_float_1e9": (lambda p: _h5(p, actions=_ACTIONS, images=np.full((6, 28, 28, 3), 1e9, np.float32),
                                       proprio=_PROPRIO), "holds float32 images"),
    "proprio_longer_than_actions": (lambda p: _h5(p, actions=_ACTIONS, images=_IMAGES,
                                                  proprio=np.zeros((9, 1), np.float32)), "obs/proprio has 9 steps"),
    "no_data_group": (lambda p: __import__("h5py").File(p, "w").close(), "no 'data' group"),
    "text_file": (lambda p: p.write_text("actions,1,2,3\n"), "text_file.h5 is not a readable HDF5 file"),
}


@pytest.fixture(scope="module")
def hdf5_results(tmp_path_factory) -> dict[str, dict]:
    """``dynaguide train dynamics --data <bad file>`` for every case in ONE subprocess under a 3 GB address-space
    cap: case -> {"code", "stderr", "unchanged", "outputs"}."""
    root = tmp_path_factory.mktemp("hdf5")
    digests = {}
    for case, (write, _) in BAD_HDF5.items():
        write(root / f"{case}.h5")
        digests[case] = digest(root / f"{case}.h5")
    args = ["--embedder", "random", "--embedder-image-size", "28", "--embedder-patch-size", "14",
            "--embedder-dim", "8", "--steps", "1", "--threads", "1", "--no-progress", "--no-plot"]
    result = run_limited(f"""
        import contextlib, io, json
        from dynaguide_cli.main import main
        out = {{}}
        for case in {sorted(BAD_HDF5)!r}:
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    code = main(["train", "dynamics", "--data", {str(root)!r} + f"/{{case}}.h5",
                                 "--out", {str(root)!r} + f"/out_{{case}}", *{args!r}])
                except BaseException as exc:
                    code = f"raised {{type(exc).__name__}}: {{exc}}"
            out[case] = {{"code": code, "stderr": err.getvalue()}}
        print(json.dumps(out))
    """, memory_mb=3000, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for case in out:
        out[case]["unchanged"] = digest(root / f"{case}.h5") == digests[case]
        out[case]["leftovers"] = sorted(p.name for p in root.glob(f"*{case}*") if p.name != f"{case}.h5"
                                        and p.name != f"out_{case}")
    return out


@pytest.mark.parametrize("case", sorted(BAD_HDF5))
def test_a_bad_hdf5_dataset_is_refused_in_one_line(hdf5_results, case):
    got = hdf5_results[case]
    lines = [line for line in got["stderr"].splitlines() if line.strip()]
    assert got["code"] == 2, got
    assert len(lines) == 1 and "Traceback" not in got["stderr"], got["stderr"]
    assert lines[0].startswith("dynaguide: error: ") and BAD_HDF5[case][1] in lines[0], lines[0]
    assert got["unchanged"] and got["leftovers"] == [], got


# --------------------------------------------------------------------------------- LeRobot policy directories
def _lerobot_policy_dir(out: Path) -> None:
    """A tiny real LeRobot DiffusionPolicy with its processors, written by LeRobot's own save_pretrained."""
    import torch

    from dynaguide.policy.lerobot_adapter import import_lerobot

    try:
        import_lerobot()
    except ImportError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"LeRobot is not installed ({exc})")
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors
    from lerobot.utils.constants import ACTION, OBS_STATE

    cam = "observation.images.front"
    config = DiffusionConfig(
        input_features={OBS_STATE: PolicyFeature(FeatureType.STATE, (2,)), cam: PolicyFeature(FeatureType.VISUAL,
                                                                                                (3, 32, 32))},
        output_features={ACTION: PolicyFeature(FeatureType.ACTION, (2,))}, n_obs_steps=2, horizon=8,
        n_action_steps=4, down_dims=(16, 32), kernel_size=3, n_groups=4, diffusion_step_embed_dim=16,
        spatial_softmax_num_keypoints=8, num_inference_steps=10, pretrained_backbone_weights=None, device="cpu",
        push_to_hub=False)
    torch.manual_seed(0)
    stats = {OBS_STATE: {"min": -torch.ones(2), "max": torch.ones(2)},
             ACTION: {"min": -torch.ones(2), "max": torch.ones(2)},
             cam: {"mean": torch.full((3, 1, 1), 0.4), "std": torch.full((3, 1, 1), 0.2)}}
    pre, post = make_diffusion_pre_post_processors(config, dataset_stats=stats)
    for part in (DiffusionPolicy(config), pre, post):
        part.save_pretrained(out)


def _edit_json_file(name: str, edit):
    def damage(d: Path) -> None:
        data = json.loads((d / name).read_text())
        edit(data)
        (d / name).write_text(json.dumps(data))
    return damage


def _set_state_file(value: str):
    def edit(spec: dict) -> None:
        (step,) = [s for s in spec["steps"] if "state_file" in s]
        step["state_file"] = value
    return _edit_json_file("policy_postprocessor.json", edit)


def _state_file_symlinked_out(d: Path) -> None:
    spec = json.loads((d / "policy_postprocessor.json").read_text())
    (step,) = [s for s in spec["steps"] if "state_file" in s]
    outside = d.parent / f"{d.name}-stats.safetensors"
    (d / step["state_file"]).rename(outside)
    (d / step["state_file"]).symlink_to(outside)


def _nan_safetensors(pattern: str):
    def damage(d: Path) -> None:
        from safetensors.torch import load_file, save_file

        (file,) = d.glob(pattern)
        tensors = load_file(str(file))
        first = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
        tensors[first] = tensors[first].clone().fill_(float("nan"))
        save_file(tensors, str(file))
    return damage


BAD_LEROBOT = {  # case -> (damage to a saved policy directory, what the error must say)
    "state_file_traversal": (_set_state_file("../outside.safetensors"), "points outside the directory"),
    "state_file_absolute": (_set_state_file("/etc/passwd"), "points outside the directory"),
    "state_file_symlinked_out": (_state_file_symlinked_out, "resolves outside the directory"),
    "state_file_missing": (_set_state_file("policy_postprocessor_step_9_gone.safetensors"), "does not exist"),
    "down_dims_100000": (_edit_json_file("config.json", lambda c: c.update(down_dims=[16, 32, 100000])),
                         "over the limit of"),
    "down_dims_not_matching_weights": (_edit_json_file("config.json", lambda c: c.update(down_dims=[16, 64])),
                                       "not one checkpoint"),
    "weights_nan": (_nan_safetensors("model.safetensors"), "NaN or infinite"),
    "stats_nan": (_nan_safetensors("policy_postprocessor_step_*.safetensors"), "NaN or infinite"),
}


@pytest.fixture(scope="module")
def lerobot_results(tmp_path_factory) -> dict[str, dict]:
    """Every damaged policy directory loaded by a RELATIVE path (a missing file must not go to the hub) in ONE
    subprocess, offline checks aside, under a 3.5 GB address-space cap: case -> {"error", "message"}."""
    import shutil

    root = tmp_path_factory.mktemp("lerobot")
    _lerobot_policy_dir(root / "good")
    (root / "outside.safetensors").write_bytes((root / "good" / "model.safetensors").read_bytes())
    for case, (damage, _) in BAD_LEROBOT.items():
        shutil.copytree(root / "good", root / case)
        damage(root / case)
    result = run_limited(f"""
        import json, os
        os.chdir({str(root)!r})
        from dynaguide.policy.lerobot_adapter import load_policy
        out = {{}}
        for case in ["good", *{sorted(BAD_LEROBOT)!r}]:
            try:
                load_policy("lerobot", case)  # relative
                out[case] = {{"error": None, "message": "loaded"}}
            except BaseException as exc:
                out[case] = {{"error": type(exc).__name__, "message": str(exc)}}
        print(json.dumps(out))
    """, memory_mb=3500, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_good_lerobot_policy_directory_loads(lerobot_results):
    assert lerobot_results["good"]["error"] is None, lerobot_results["good"]


@pytest.mark.parametrize("case", sorted(BAD_LEROBOT))
def test_a_bad_lerobot_policy_directory_is_refused_before_reading_outside_or_allocating(lerobot_results, case):
    got = lerobot_results[case]
    assert got["error"] in ("InputError", "ValueError"), got
    assert BAD_LEROBOT[case][1] in got["message"] and "\n" not in got["message"], got["message"]


# ------------------------------------------------------------------------------------------- command lines
@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    from dynaguide.data.schema import Demo
    from dynaguide.data.writer import write_hdf5_dataset

    rng = np.random.default_rng(0)
    demos = [Demo(actions=rng.normal(size=(6, 2)), images={"rgb": rng.integers(0, 255, (6, 28, 28, 3), np.uint8)},
                  proprio=np.zeros((6, 1)), name=f"demo_{i}") for i in range(2)]
    return write_hdf5_dataset(tmp_path / "data" / "d.h5", demos)


TINY_TRAIN = ["--embedder", "random", "--embedder-image-size", "28", "--embedder-patch-size", "14",
              "--embedder-dim", "8", "--steps", "1", "--threads", "1", "--no-progress", "--no-plot"]

BAD_COMMAND_LINES = {  # case -> (argv with {data} / {tmp} placeholders, what the one line must say)
    "export_lerobot_fps_0": (["dataset", "export-lerobot", "{data}", "--out", "{tmp}/lr", "--fps", "0"],
                             "--fps must be in 1..1000"),
    "export_lerobot_out_is_the_input": (["dataset", "export-lerobot", "{data}", "--out", "{data}", "--overwrite"],
                                        "is, or holds, the input"),
    "export_lerobot_out_holds_the_input": (["dataset", "export-lerobot", "{data}", "--out", "{tmp}/data",
                                            "--overwrite"], "is, or holds, the input"),
    "train_set_n_heads_0": (["train", "dynamics", "--data", "{data}", "--out", "{tmp}/run", "--set", "n_heads=0",
                             *TINY_TRAIN], "n_heads must be a number in [1, 256], got 0"),
    "train_set_model_dim_1e6": (["train", "dynamics", "--data", "{data}", "--out", "{tmp}/run", "--set",
                                 "model_dim=1000000", *TINY_TRAIN], "model_dim must be a number"),
    "train_set_dropout_nan": (["train", "dynamics", "--data", "{data}", "--out", "{tmp}/run", "--set",
                               "dropout=.nan", *TINY_TRAIN], "dropout must be a number"),
    "demo_checkpoints_missing": (["demo", "--checkpoints", "{tmp}/nonexistent", "--out", "{tmp}/demo"],
                                 "demo --checkpoints"),
    "launch_params_file_missing": (["launch", "calvin_sim", "--params-file", "{tmp}/nonexistent.yaml"],
                                   "launch --params-file"),
}


@pytest.mark.parametrize("case", sorted(BAD_COMMAND_LINES))
def test_a_bad_command_line_is_one_line_exit_2_and_changes_nothing(capsys, tmp_path, tiny_dataset, case):
    argv, needle = BAD_COMMAND_LINES[case]
    (tmp_path / "bad.yaml").write_text("treads: 2\n")
    before = {p: digest(p) for p in tmp_path.rglob("*") if p.is_file()}
    code, err = run_cli(capsys, *(a.format(data=tiny_dataset, tmp=tmp_path) for a in argv))
    assert_one_line_error(code, err, "dynaguide: error: ", needle)
    after = {p: digest(p) for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing changed (no partial outputs, no temp files)
    assert not (tmp_path / "demo").exists()  # refused before the demo started anything


def test_debug_shows_the_traceback(capsys, junk_recording, monkeypatch):
    from dynaguide.recordings import RecordingError

    args = ["dataset", "from-mcap", str(junk_recording), "--out", str(junk_recording.with_suffix(".h5"))]
    code, err = run_cli(capsys, *args)
    assert code == 2 and "Traceback" not in err
    with pytest.raises(RecordingError, match="not a readable MCAP file"):
        run_cli(capsys, "--debug", *args)
    monkeypatch.setenv("DYNAGUIDE_DEBUG", "1")
    with pytest.raises(RecordingError, match="not a readable MCAP file"):
        run_cli(capsys, *args)


def test_train_never_writes_its_prepared_copy_over_the_input(capsys, tmp_path, tiny_dataset):
    data = tiny_dataset.rename(tmp_path / "prepared.h5")
    before = digest(data)
    code, err = run_cli(capsys, "train", "dynamics", "--data", str(data), "--out", str(tmp_path), "--segment",
                        "window", "--window", "3", *TINY_TRAIN)
    assert_one_line_error(code, err, "is the input")
    assert digest(data) == before


_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f'{c}: &{c} [{",".join(["*" + p] * 9)}]\n' for p, c in zip("abcdefgh", "bcdefghi"))

BAD_YAML = {  # case -> (content of the --config file, what the one line must say)
    "mistyped_key": ("treads: 2\n", "unknown key(s) ['treads']"),
    "nested_mistyped_key": ("env:\n  arena_sise: 3\n", "unknown key(s) ['arena_sise']"),
    "wrong_type": ("threads: many\n", "expected an integer"),
    "not_a_mapping": ("- 1\n- 2\n", "top level must be a mapping"),
    "syntax_error": ("threads: [1, 2\n", "cannot read config"),
    "billion_laughs": (_LAUGHS, "aliases expand to more than"),
    "binary_garbage": (b"\xff\xfe\x00garbage", "cannot read config"),
}


@pytest.mark.parametrize("case", sorted(BAD_YAML))
def test_a_bad_yaml_config_is_one_line_before_anything_runs(capsys, tmp_path, case):
    content, needle = BAD_YAML[case]
    config = tmp_path / "bad.yaml"
    config.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = digest(config)
    code, err = run_cli(capsys, "blocktouch", "run", "--quick", "--config", str(config), "--work-dir",
                        str(tmp_path / "w"), "--results-dir", str(tmp_path / "r"))
    assert_one_line_error(code, err, "dynaguide: error: ", needle)
    assert digest(config) == before and sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_a_lerobot_dataset_with_nan_actions_is_refused_in_one_line(capsys, tmp_path):
    from dynaguide.policy.lerobot_adapter import _import_torchvision

    _import_torchvision()
    lerobot_dataset = pytest.importorskip("lerobot.datasets.lerobot_dataset")
    root = tmp_path / "ds"
    features = {"observation.images.top": {"dtype": "image", "shape": (16, 16, 3),
                                           "names": ["height", "width", "channels"]},
                "observation.state": {"dtype": "float32", "shape": (2,), "names": None},
                "action": {"dtype": "float32", "shape": (2,), "names": None}}
    ds = lerobot_dataset.LeRobotDataset.create("local/ds", fps=10, root=root, features=features, use_videos=False)
    for i in range(4):
        ds.add_frame({"observation.images.top": np.full((16, 16, 3), i, np.uint8),
                      "observation.state": np.zeros(2, np.float32),
                      "action": np.array([i, np.nan if i == 2 else 0], np.float32), "task": "t"})
    ds.save_episode()
    ds.finalize()
    before = {p: digest(p) for p in root.rglob("*") if p.is_file()}
    code, err = run_cli(capsys, "train", "dynamics", "--data", str(root), "--camera", "observation.images.top",
                        "--out", str(tmp_path / "run"), *TINY_TRAIN)
    assert_one_line_error(code, err, "episode 0 has NaN or infinite action")
    assert {p: digest(p) for p in root.rglob("*") if p.is_file()} == before


# ------------------------------------------------------------------------------ ROS parameter files (launch)
BAD_PARAMS = {  # case -> (parameter file, extra arguments, what the one line must say)
    "mistyped_parameter": ("policy_node:\n  ros__parameters:\n    runner.polcy_checkpoint: x\n", [],
                           "unknown parameter 'runner.polcy_checkpoint'"),
    "integer_for_a_double": ("calvin_bridge:\n  ros__parameters:\n    camera_hz: 30\n", [],
                             "is integer 30, but the node declares it as double"),
    "value_the_config_refuses": ("embedding_node:\n  ros__parameters:\n    embedder.kind: nosuch\n", [],
                                 "embedder kind must be one of"),
    "unknown_node": ("polcy_node:\n  ros__parameters:\n    seed: 1\n", [], "no node 'polcy_node'"),
    "not_a_parameter_file": ("calvin_bridge:\n  seed: 1\n", [], "must hold only 'ros__parameters'"),
    "mistyped_set_override": ("calvin_bridge:\n  ros__parameters:\n    seed: 1\n",
                              ["--set", "policy_node.replan_perod_s=1.0"], "unknown parameter 'replan_perod_s'"),
}


@pytest.mark.parametrize("case", sorted(BAD_PARAMS))
def test_a_bad_parameter_file_stops_launch_before_any_node_starts(capsys, tmp_path, case):
    content, extra, needle = BAD_PARAMS[case]
    params = tmp_path / "params.yaml"
    params.write_text(content)
    code, err = run_cli(capsys, "launch", "calvin_sim", "--params-file", str(params), *extra)
    assert_one_line_error(code, err, "dynaguide: error: ", needle)


@pytest.mark.parametrize("graph", ["calvin_sim", "real_arx5"])
def test_the_shipped_parameter_files_pass_the_launch_check(graph):
    from dynaguide_ros.graphs import GRAPHS
    from dynaguide_ros.params import check_params_files
    from dynaguide_ros.paths import config_path

    check_params_files(graph, [config_path(name) for name in GRAPHS[graph].params_files])
