"""`dynaguide blocktouch run --quick` end to end (tiny sizes, unscored) and the guidance plumbing."""

import json

import pytest
import torch

from dynaguide_cli.main import main
from dynaguide_experiments.blocktouch.classifier import OutcomeClassifier, OutcomeClassifierConfig
from dynaguide_experiments.blocktouch.config import BlockTouchConfig
from dynaguide_experiments.blocktouch.layouts import LAYOUT_NAMES
from dynaguide_experiments.blocktouch.methods import METHOD_NAMES, class_weights
from dynaguide_experiments.blocktouch.stages.models import unit_stats


def test_class_weights_are_the_papers():
    assert class_weights(2).tolist() == pytest.approx([-0.33, -0.33, 1.0, -0.33])
    with pytest.raises(ValueError):
        class_weights(4)


@pytest.mark.parametrize("path_features", [0, 3])
def test_classifier_context_split_equals_the_classifier(path_features):
    """The objective encodes the image once per chunk; logits and guidance gradients are unchanged."""
    from dynaguide.guidance import objective_value_and_grad
    from dynaguide_experiments.blocktouch.methods import classifier_objective

    torch.manual_seed(0)
    clf = OutcomeClassifier(OutcomeClassifierConfig(image_size=32, num_keypoints=4, cnn_width=8, hidden_dim=16,
                                                    proprio_dim=2, action_dim=2, horizon=16,
                                                    path_features=path_features)).eval()
    unit_stats(clf)
    image, proprio, actions = torch.rand(5, 3, 32, 32), torch.rand(5, 2) * 2 - 1, torch.randn(5, 16, 2)
    context = clf.encode_context(image, proprio)
    assert torch.allclose(clf.predict_from_context(context, actions), clf(image, proprio, actions), atol=1e-6)
    objective = classifier_objective(clf, image[:1], proprio[:1], 2, -0.33)  # batch-1 context, broadcast
    weights = class_weights(2)

    def direct(a):
        logits = clf(image[:1].expand(5, -1, -1, -1), proprio[:1].expand(5, -1), a)
        return (torch.log_softmax(logits, -1) * weights).sum(-1)

    v, g = objective_value_and_grad(objective, actions)
    v_ref, g_ref = objective_value_and_grad(direct, actions)
    assert torch.allclose(v, v_ref, atol=1e-5) and torch.allclose(g, g_ref, atol=1e-5)
    assert g.abs().sum() > 0


def test_path_features_sample_the_map_at_image_plane_points():
    """x indexes columns, y rows, [-1, 1] spans the whole image: a point at a cell centre reads that cell."""
    from dynaguide_experiments.blocktouch.classifier import sample_along_path

    fmap = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(1, 2, 4, 6)  # h = 4 rows, w = 6 columns
    cells = [(0, 0), (3, 5), (1, 4), (2, 1)]  # (row, col)
    points = torch.tensor([[[(c + 0.5) / 6 * 2 - 1, (r + 0.5) / 4 * 2 - 1] for r, c in cells]])
    out = sample_along_path(fmap, points)
    assert out.shape == (1, 4, 2)
    for t, (r, c) in enumerate(cells):
        torch.testing.assert_close(out[0, t], fmap[0, :, r, c], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="points"):
        sample_along_path(fmap, points[0])
    with pytest.raises(ValueError, match="path_features needs"):
        OutcomeClassifierConfig(action_dim=3, path_features=4)


def test_default_config_file_loads_and_is_consistent():
    from dynaguide.config import load_config, to_dict

    cfg = load_config(BlockTouchConfig, "config/blocktouch.yaml")
    assert to_dict(cfg) == to_dict(BlockTouchConfig())  # the YAML spells out the code's defaults, nothing else
    assert cfg.eval.rollouts >= 100 and cfg.eval.horizon == 400
    assert cfg.eval.classifier_scale > 0 and cfg.eval.stochastic_steps == 4 and cfg.eval.sampling_num == 10
    assert cfg.eval.other_weight == pytest.approx(-0.33)


def test_run_quick_end_to_end(tmp_path):
    work, res = tmp_path / "work", tmp_path / "results"
    assert main(["blocktouch", "run", "--quick", "--work-dir", str(work), "--results-dir", str(res)]) == 0
    results = json.loads((res / "results.json").read_text())
    assert set(results["layouts"]) == set(LAYOUT_NAMES)
    for cells in results["layouts"].values():
        assert set(cells) == set(METHOD_NAMES)
        for cell in cells.values():
            assert cell["n"] == 4 and 0.0 <= cell["ci95"][0] <= cell["rate"] <= cell["ci95"][1] <= 1.0
            assert sum(cell["touch_share"]) <= 1.0 + 1e-9
    assert {"collect", "train_policy", "train_classifier", "train_dynamics", "eval"} <= set(results["stages_s"])
    assert results["command"].startswith("dynaguide blocktouch run --quick")
    assert results["latent_scale_calibration"]["latent_scale"] > 0
    for name in ["results.md", "bars.png"] + [f"trajectories_{name}.png" for name in LAYOUT_NAMES]:
        assert (res / name).stat().st_size > 0
    for sub in ("policy", "goal_policy", "classifier", "dynamics"):
        assert (work / sub / "latest" / "model.safetensors").exists()
    assert not list(work.rglob("*.pt")) and not list(work.rglob("*.pkl"))
    # validation-scene guidance sweep (both M-step modes selectable)
    assert main(["blocktouch", "sweep", "--quick", "--work-dir", str(work), "--results-dir", str(res),
                 "--rollouts", "2", "--layouts", "random", "--scales", "0,0.5", "--stochastic-mode", "repeat"]) == 0
    sweep = json.loads((res / "sweep_repeat.json").read_text())
    assert set(sweep["results"]["dynaguide_classifier"]) == {"repeat:0.0", "repeat:0.5"}
    assert sweep["results"]["dynaguide_classifier"]["repeat:0.5"]["random"]["n"] == 2
    # open-loop first-chunk diagnosis: executed outcome vs the classifier's belief
    assert main(["blocktouch", "diagnose", "--quick", "--work-dir", str(work), "--results-dir", str(res),
                 "--rollouts", "6", "--layouts", "random,cube_blockade"]) == 0
    diag = json.loads((res / "diagnose.json").read_text())["results"]
    assert set(diag) == {"random", "cube_blockade"}
    for cells in diag.values():
        assert set(cells) == {"base", "dynaguide_classifier", "sampling"}
        for cell in cells.values():
            assert cell["n"] == 6 and 0.0 <= cell["chunk_target_rate"] <= cell["chunk_touched_any"] <= 1.0
            assert 0.0 < cell["classifier_p_target"] < 1.0
    # resumable: a second run skips every stage (no new stage time recorded)
    before = json.loads((work / "stages.json").read_text())
    assert main(["blocktouch", "run", "--quick", "--work-dir", str(work), "--results-dir", str(res)]) == 0
    assert json.loads((work / "stages.json").read_text()) == before
