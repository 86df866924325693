"""DPO-family, reward-model and KTO stages on the shared demo preference / KTO files with the tiny Qwen2."""

from __future__ import annotations

import math

import pytest
import torch

SMALL = {"max_steps": 6, "global_batch_size": 8, "micro_batch_size": 4, "save_steps": 0, "learning_rate": 5e-3}
DPO = {"beta": 0.1, "label_smoothing": 0.0, "simpo_gamma": 0.5, "ftx": 0.0}


def _dpo(loss: str, beta: float, simpo_gamma: float = 0.5):
    from tkc.bundle.plan import ResolvedDpoOptions

    return ResolvedDpoOptions(loss=loss, beta=beta, label_smoothing=0.0, simpo_gamma=simpo_gamma, ftx=0.0)


def _bundle(rt, tmp_path, tiny_pretrained, kind, datasets, options=None, **kw):
    st = rt.stage(kind, kind, 0, datasets, options=options or {}, **{**SMALL, **kw})
    plan = rt.resolved([st], model_path=str(tiny_pretrained), init="pretrained", cutoff_len=96)
    for d in plan["datasets"].values():
        d["max_samples"] = 16
    return rt.write_bundle(tmp_path / "run", plan)


@pytest.mark.parametrize(("loss", "method"), [("sigmoid", "lora"), ("sigmoid", "full"), ("ipo", "lora"),
                                              ("hinge", "full"), ("orpo", "lora"), ("simpo", "full")])
def test_dpo_losses_train(rt, tmp_path, tiny_pretrained, shared_datasets, loss, method):
    bundle = _bundle(rt, tmp_path, tiny_pretrained, "dpo", ["dpo_pairs"], {**DPO, "loss": loss}, method=method)
    before, after, trainable, _, losses = rt.train_and_compare(bundle, "dpo")
    rt.assert_trained(before, after, trainable, losses)
    if loss == "sigmoid":  # policy == reference at step 0, so the first loss is exactly -log sigmoid(0)
        assert losses[0] == pytest.approx(math.log(2), abs=1e-5)


def test_preference_loss_formulas():
    from tkc.runtime.stages.dpo import preference_loss

    pol, ref, n = (torch.tensor([-4.0]), torch.tensor([-6.0])), (torch.tensor([-5.0]), torch.tensor([-5.0])), \
        (torch.tensor([2.0]), torch.tensor([3.0]))
    beta = 0.5
    margin = beta * ((-4 + 6) - 0)
    sig = preference_loss(_dpo("sigmoid", beta), pol, ref, n)
    assert sig.item() == pytest.approx(-math.log(1 / (1 + math.exp(-margin))))
    assert preference_loss(_dpo("hinge", beta), pol, ref, n).item() == pytest.approx(max(0, 1 - margin))
    gap = (-4 / 2 - -6 / 3) - (-5 / 2 - -5 / 3)
    ipo = preference_loss(_dpo("ipo", beta), pol, ref, n).item()
    assert ipo == pytest.approx((gap - 1 / (2 * beta)) ** 2)
    simpo = preference_loss(_dpo("simpo", beta, 0.3), pol, None, n).item()
    assert simpo == pytest.approx(-math.log(1 / (1 + math.exp(-(beta * (-2 - -2) - 0.3)))))
    ac, ar = -2.0, -2.0
    orpo = preference_loss(_dpo("orpo", beta), pol, None, n).item()
    assert orpo == pytest.approx(-ac - beta * math.log(0.5), rel=1e-5)  # equal averages: odds ratio term is log 1/2
    del ar


@pytest.mark.parametrize("method", ["full", "lora"])
def test_reward_model_trains_value_head(rt, tmp_path, tiny_pretrained, shared_datasets, method):
    bundle = _bundle(rt, tmp_path, tiny_pretrained, "rm", ["dpo_pairs"], method=method)
    before, after, trainable, model, losses = rt.train_and_compare(bundle, "rm", head="seq_cls")
    rt.assert_trained(before, after, trainable, losses)
    assert any("score" in n for n in trainable)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_kto_trains(rt, tmp_path, tiny_pretrained, shared_datasets, method):
    opts = {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0}
    bundle = _bundle(rt, tmp_path, tiny_pretrained, "kto", ["kto"], opts, method=method)
    before, after, trainable, _, losses = rt.train_and_compare(bundle, "kto")
    rt.assert_trained(before, after, trainable, losses)
    assert losses[0] == pytest.approx(0.5, abs=1e-5)  # log-ratio 0 at the start: 1 - sigmoid(0)


def test_kto_loss_weights_desirable_and_undesirable():
    from tkc.bundle.plan import ResolvedKtoOptions
    from tkc.runtime.stages.kto import kto_loss

    r = torch.tensor([1.0, -1.0])
    out = kto_loss(ResolvedKtoOptions(beta=1.0, desirable_weight=2.0, undesirable_weight=3.0), r, torch.tensor([True, False]))
    z = 0.0  # mean log-ratio 0, clamped at 0
    assert out[0].item() == pytest.approx(2 * (1 - 1 / (1 + math.exp(-(1 - z)))))
    assert out[1].item() == pytest.approx(3 * (1 - 1 / (1 + math.exp(-(z + 1)))))
