"""`dynaguide blocktouch run --quick` end to end (tiny sizes, unscored) and the guidance plumbing."""

import json

import pytest
import torch

from dynaguide.cli import main
from dynaguide.dynamics import OutcomeClassifier, OutcomeClassifierConfig
from dynaguide.experiments.blocktouch.config import BlockTouchConfig
from dynaguide.experiments.blocktouch.layouts import LAYOUT_NAMES
from dynaguide.experiments.blocktouch.methods import METHOD_NAMES, CachedImageClassifier, class_weights
from dynaguide.experiments.blocktouch.pipeline import _unit_stats


def test_class_weights_are_the_papers():
    assert class_weights(2).tolist() == pytest.approx([-0.33, -0.33, 1.0, -0.33])
    with pytest.raises(ValueError):
        class_weights(4)


def test_cached_image_classifier_equals_the_classifier():
    torch.manual_seed(0)
    clf = OutcomeClassifier(OutcomeClassifierConfig(image_size=32, num_keypoints=4, cnn_width=8, hidden_dim=16,
                                                    proprio_dim=2, action_dim=2, horizon=16)).eval()
    _unit_stats(clf)
    image, proprio, actions = torch.rand(5, 3, 32, 32), torch.rand(5, 2) * 2 - 1, torch.randn(5, 16, 2)
    cached = CachedImageClassifier(clf, image, proprio)
    assert torch.allclose(cached(image, proprio, actions), clf(image, proprio, actions), atol=1e-6)
    one = CachedImageClassifier(clf, image[:1], proprio[:1])  # batch-1 context broadcast over the actions
    assert torch.allclose(one(image[:1], proprio[:1], actions), clf(image[:1].expand(5, -1, -1, -1),
                                                                      proprio[:1].expand(5, -1), actions), atol=1e-6)


def test_default_config_file_loads_and_is_consistent():
    from dynaguide.config import load_config

    cfg = load_config(BlockTouchConfig, "config/blocktouch.yaml")
    assert cfg.eval.rollouts >= 100 and cfg.eval.horizon == 400
    assert cfg.eval.classifier_scale == 0.5 and cfg.eval.stochastic_steps == 4 and cfg.eval.sampling_num == 10
    assert cfg.eval.other_weight == pytest.approx(-0.33)


def test_run_quick_end_to_end(tmp_path):
    work, res = tmp_path / "work", tmp_path / "results"
    assert main(["blocktouch", "run", "--quick", "--work-dir", str(work), "--results-dir", str(res)]) == 0
    results = json.loads((res / "results.json").read_text())
    assert set(results["layouts"]) == set(LAYOUT_NAMES)
    for layout, cells in results["layouts"].items():
        assert set(cells) == set(METHOD_NAMES)
        for cell in cells.values():
            assert cell["n"] == 4 and 0.0 <= cell["ci95"][0] <= cell["rate"] <= cell["ci95"][1] <= 1.0
            assert sum(cell["touch_share"]) <= 1.0 + 1e-9
    assert {"collect", "train_policy", "train_classifier", "train_dynamics", "eval"} <= set(results["stages_s"])
    assert results["command"].startswith("dynaguide blocktouch run --quick")
    assert results["latent_scale_calibration"]["latent_scale"] > 0
    for name in ["results.md", "bars.png"] + [f"trajectories_{l}.png" for l in LAYOUT_NAMES]:
        assert (res / name).stat().st_size > 0
    for sub in ("policy", "goal_policy", "classifier", "dynamics"):
        assert (work / sub / "latest" / "model.safetensors").exists()
    assert not list(work.rglob("*.pt")) and not list(work.rglob("*.pkl"))
    # validation-scene guidance sweep (both M-step modes selectable)
    assert main(["blocktouch", "sweep", "--quick", "--work-dir", str(work), "--results-dir", str(res), "--rollouts", "2",
                 "--layouts", "random", "--scales", "0,0.5", "--stochastic-mode", "repeat"]) == 0
    sweep = json.loads((res / "sweep_repeat.json").read_text())
    assert set(sweep["results"]["dynaguide_classifier"]) == {"repeat:0.0", "repeat:0.5"}
    assert sweep["results"]["dynaguide_classifier"]["repeat:0.5"]["random"]["n"] == 2
    # resumable: a second run skips every stage (no new stage time recorded)
    before = json.loads((work / "stages.json").read_text())
    assert main(["blocktouch", "run", "--quick", "--work-dir", str(work), "--results-dir", str(res)]) == 0
    assert json.loads((work / "stages.json").read_text()) == before
