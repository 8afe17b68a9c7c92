"""BlockTouch's outcome classifier (dynaguide_experiments.blocktouch.classifier): shapes, dependence on the actions,
and its checkpoint round trip (kind ``outcome_classifier``, registered by the module)."""

import pytest
import torch

from dynaguide.checkpoint import load_checkpoint, load_training_state, save_checkpoint
from dynaguide_experiments.blocktouch.classifier import OutcomeClassifier, OutcomeClassifierConfig


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def test_outcome_classifier_shapes_and_dependence_on_actions():
    torch.manual_seed(0)
    cfg = OutcomeClassifierConfig(num_classes=3, image_size=32, proprio_dim=2, action_dim=2)
    c = OutcomeClassifier(cfg)
    img, prop = torch.rand(4, 3, 32, 32), torch.randn(4, 2)
    a = torch.randn(4, 16, 2, requires_grad=True)
    logits = c(img, prop, a)
    assert logits.shape == (4, 3)
    grad, = torch.autograd.grad(torch.log_softmax(logits, -1)[:, 0].sum(), a)
    assert grad.abs().sum() > 0
    with pytest.raises(ValueError, match="num_classes"):
        OutcomeClassifierConfig(num_classes=1)


def test_classifier_round_trip_and_optimizer_state(tmp_path):
    torch.manual_seed(0)
    cfg = OutcomeClassifierConfig(num_classes=3, image_size=32)
    model = OutcomeClassifier(cfg)
    model.set_normalizer_stats(-torch.ones(2), torch.ones(2), -torch.ones(2), torch.ones(2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = {"image": torch.rand(4, 3, 32, 32), "proprio": torch.randn(4, 2), "actions": torch.rand(4, 16, 2),
             "label": torch.tensor([0, 1, 2, 0])}
    for _ in range(2):
        opt.zero_grad()
        model.compute_loss(batch, torch.Generator().manual_seed(0)).backward()
        opt.step()
    save_checkpoint(tmp_path / "cls", model, cfg, optimizer=opt, step=2)
    loaded, _ = load_checkpoint(tmp_path / "cls")
    _assert_same_state(loaded, model)
    fresh = OutcomeClassifier(cfg)
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    meta = load_training_state(tmp_path / "cls", fresh, optimizer=opt2)
    assert meta["step"] == 2
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for idx in s1["state"]:
        for name, value in s1["state"][idx].items():
            assert torch.equal(value, s2["state"][idx][name])
    assert s1["param_groups"][0]["lr"] == s2["param_groups"][0]["lr"]
