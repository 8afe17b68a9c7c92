"""HDF5 layout, policy/dynamics windows (padding + alignment known answers), embedding cache."""

import h5py
import numpy as np
import pytest
import torch

from dynaguide.data.datasets import DynamicsDataset, PolicyDataset, action_chunk
from dynaguide.data.embedding_cache import EmbeddingCache, build_embedding_cache, embed_demos
from dynaguide.data.schema import Demo
from dynaguide.data.source import DemoSource, split_demos
from dynaguide.data.writer import write_demo, write_hdf5_dataset
from dynaguide.embedders.random_patch import RandomPatchEmbedder



def _demo(length, offset, behaviour, a_dim=2):
    """Frame s of demo with offset o has every pixel = o + s, action s = [o + s, -(o + s)], proprio = o + s + 0.5."""
    steps = np.arange(length, dtype=np.float32) + offset
    images = np.broadcast_to(steps.astype(np.uint8)[:, None, None, None], (length, 8, 8, 3)).copy()
    actions = np.stack([steps, -steps], axis=1)[:, :a_dim]
    proprio = (steps + 0.5)[:, None].repeat(2, axis=1)
    return Demo(actions=actions, images={"rgb": images, "wrist": 255 - images}, proprio=proprio,
                states=steps[:, None], behaviour=behaviour)


@pytest.fixture
def h5_path(tmp_path):
    demos = [_demo(5, 0, "left"), _demo(3, 100, "right"), _demo(20, 200, "left")]
    return write_hdf5_dataset(tmp_path / "demos.hdf5", demos)


def test_layout_is_robomimic_like(h5_path):
    with h5py.File(h5_path, "r") as f:
        g = f["data/demo_1"]
        assert g.attrs["behavior"] == "right"
        assert g["actions"].shape == (3, 2)
        assert g["obs/rgb"].shape == (3, 8, 8, 3) and g["obs/rgb"].dtype == np.uint8
        assert g["obs/proprio"].shape == (3, 2) and g["obs/states"].shape == (3, 1)
    src = DemoSource(h5_path)
    assert src.names == ["demo_0", "demo_1", "demo_2"]
    assert sorted(src.cameras("demo_0")) == ["rgb", "wrist"]


def test_write_demo_appends_to_an_open_file_with_attrs_and_compression(tmp_path, h5_path):
    """The one writer of the layout also serves incremental writers (calvin_bridge.datasets): a demo appended
    to an existing file, gzip-compressed cameras in one-frame chunks, extra attrs, and it reads back."""
    with h5py.File(h5_path, "a") as f:
        g = write_demo(f["data"], _demo(4, 50, "up"), "demo_3", attrs={"seed": 7, "label": "up"},
                       compression="gzip", compression_opts=1)
        assert g["obs/rgb"].compression == "gzip" and g["obs/rgb"].compression_opts == 1
        assert g["obs/rgb"].chunks == (1, 8, 8, 3) and g["actions"].dtype == np.float32
        assert dict(g.attrs) == {"behavior": "up", "seed": 7, "label": "up", "num_samples": 4}
    src = DemoSource(h5_path)
    assert src.names == ["demo_0", "demo_1", "demo_2", "demo_3"]
    assert src.frame("demo_3", "wrist", 2)[0, 0, 0] == 255 - 52


def test_action_chunk_repeats_the_last_action():
    a = np.arange(5, dtype=np.float32)[:, None]
    assert action_chunk(a, 3, 4)[:, 0].tolist() == [3, 4, 4, 4]
    assert action_chunk(a, 0, 3)[:, 0].tolist() == [0, 1, 2]


def test_policy_windows_padding_and_alignment(h5_path):
    ds = PolicyDataset(h5_path, ["rgb"], n_obs_steps=2, horizon=4, goal_key="goal_image")
    assert len(ds) == 5 + 3 + 20
    first = ds[0]  # demo_0, t = 0: obs [0, 0] (first frame repeated), actions 0..3
    assert first["rgb"].shape == (2, 3, 8, 8)
    assert torch.allclose(first["rgb"][:, 0, 0, 0] * 255, torch.tensor([0.0, 0.0]))
    assert first["actions"][:, 0].tolist() == [0, 1, 2, 3]
    assert first["proprio"][:, 0].tolist() == [0.5, 0.5]
    item = ds[3]  # demo_0, t = 3: obs [2, 3], actions 3, 4, 4, 4 (last repeated)
    assert torch.allclose(item["rgb"][:, 0, 0, 0] * 255, torch.tensor([2.0, 3.0]))
    assert item["actions"][:, 0].tolist() == [3, 4, 4, 4]
    assert item["actions"][:, 1].tolist() == [-3, -4, -4, -4]
    assert item["proprio"][:, 0].tolist() == [2.5, 3.5]
    assert torch.allclose(item["goal_image"][0, 0, 0] * 255, torch.tensor(4.0))  # final frame of demo_0
    short = ds[5 + 2]  # demo_1 (offset 100), t = 2 = its last step
    assert short["actions"][:, 0].tolist() == [102] * 4
    stats = ds.stats()
    assert stats["action_min"].tolist() == [0, -219] and stats["action_max"].tolist() == [219, 0]


def test_dynamics_items_start_at_current_step_and_target_final_frame(h5_path):
    ds = DynamicsDataset(h5_path, "rgb", horizon=4, class_names=["left", "right"])
    names = [n for n, _ in ds.index]
    assert names.count("demo_1") == 3
    i = ds.index.index(("demo_2", 17))
    item = ds[i]
    assert item["actions"][:, 0].tolist() == [217, 218, 219, 219]
    assert item["proprio"].tolist() == [217.5, 217.5]
    assert torch.allclose(item["image"][:, 0, 0] * 255, torch.full((3,), 217.0))
    assert torch.allclose(item["target_image"][:, 0, 0] * 255, torch.full((3,), 219.0))
    assert item["label"].item() == 0
    assert ds[ds.index.index(("demo_1", 0))]["label"].item() == 1
    only_left = DynamicsDataset(h5_path, "rgb", horizon=4, class_names=["left"])
    assert {n for n, _ in only_left.index} == {"demo_0", "demo_2"}


def test_in_memory_demos_match_the_hdf5_file(h5_path):
    demos = [_demo(5, 0, "left"), _demo(3, 100, "right"), _demo(20, 200, "left")]
    mem = PolicyDataset(demos, ["rgb", "wrist"], n_obs_steps=2, horizon=16)
    disk = PolicyDataset(h5_py_open := h5py.File(h5_path, "r"), ["rgb", "wrist"], n_obs_steps=2, horizon=16)
    for i in (0, 4, 7, 27):
        a, b = mem[i], disk[i]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    h5_py_open.close()


def test_bad_inputs_raise(tmp_path, h5_path):
    with pytest.raises(ValueError, match="does not exist"):
        PolicyDataset(tmp_path / "nope.hdf5", ["rgb"])
    with pytest.raises(ValueError, match="no camera 'depth'"):
        PolicyDataset(h5_path, ["depth"])[0]
    with pytest.raises(ValueError, match="matched nothing"):
        DynamicsDataset(h5_path, "rgb", behaviours=["jump"])
    with pytest.raises(ValueError, match=r"\(L=3, H, W, 3\) uint8"):
        Demo(actions=np.zeros((3, 2)), images={"rgb": np.zeros((3, 8, 8, 3), np.float32)}, proprio=np.zeros((3, 1)))
    with pytest.raises(ValueError, match="no 'data' group"):
        with h5py.File(tmp_path / "empty.hdf5", "w"):
            pass
        DemoSource(tmp_path / "empty.hdf5")


def test_split_is_by_whole_demos(h5_path):
    train, val = split_demos(h5_path, val_fraction=0.34, seed=0)
    assert len(val) == 1 and sorted(train + val) == ["demo_0", "demo_1", "demo_2"]
    ds = PolicyDataset(h5_path, ["rgb"], demos=val)
    assert {n for n, _ in ds.index} == set(val)


def test_embedding_cache_matches_the_embedder_and_detects_stale_files(tmp_path, h5_path):
    emb = RandomPatchEmbedder(image_size=16, patch_size=4, dim=8, seed=0)
    cache = build_embedding_cache(h5_path, emb, "rgb", dtype="float32", progress=False)
    assert cache.path.name.startswith("demos.rgb.") and cache.path.suffix == ".h5"
    ds = DynamicsDataset(h5_path, "rgb", horizon=4, tokens=cache)
    i = ds.index.index(("demo_0", 1))
    item = ds[i]
    frame = torch.full((1, 3, 8, 8), 1.0 / 255)
    final = torch.full((1, 3, 8, 8), 4.0 / 255)
    assert torch.allclose(item["obs_tokens"], emb(frame)[0], atol=1e-6)
    assert torch.allclose(item["target_tokens"], emb(final)[0], atol=1e-6)
    assert "image" not in item
    # in-memory equivalent
    mem = embed_demos([_demo(5, 0, "left")], emb, "rgb")
    assert np.allclose(mem["demo_0"], np.asarray(cache["demo_0"]), atol=1e-6)
    # the cache is keyed by the dataset file: rewriting the file makes it stale
    ds.close()
    cache.close()
    write_hdf5_dataset(h5_path, [_demo(6, 0, "left")])
    with pytest.raises(ValueError, match="different version"):
        EmbeddingCache(cache.path, h5_path)
    rebuilt = build_embedding_cache(h5_path, emb, "rgb", cache_path=cache.path, progress=False)
    assert rebuilt["demo_0"].shape == (6, 16, 8)
    with pytest.raises(ValueError, match="another embedder"):
        EmbeddingCache(cache.path, h5_path, "rgb", fingerprint="0000")


def test_dataloader_workers_read_the_hdf5_file_themselves(h5_path):
    ds = PolicyDataset(h5_path, ["rgb"], n_obs_steps=2, horizon=4)
    _ = ds[0]  # the parent process has the file open now
    loader = torch.utils.data.DataLoader(ds, batch_size=7, num_workers=2, shuffle=False)
    batches = list(loader)
    direct = torch.utils.data.default_collate([ds[i] for i in range(7)])
    assert torch.equal(batches[0]["actions"], direct["actions"]) and torch.equal(batches[0]["rgb"], direct["rgb"])
    assert sum(len(b["actions"]) for b in batches) == len(ds)
