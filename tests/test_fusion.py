"""FDLoRA: the parameter-space merge, the fusion-weight search and one client's dual round."""

from __future__ import annotations

import pytest
import torch

from amole.backbones.loader import load_base_model
from amole.client.round import ClientJob
from amole.compose import compose
from amole.config import FusionConfig
from amole.data.scenario import client_splits
from amole.moe.bank import create_bank, payload
from amole.moe.model import export_adapters, inject
from amole.strategies.fdlora import merge, train_dual_and_score, tune_weights


def test_merge_is_the_weighted_sum_of_every_tensor() -> None:
    p = {"m.shared.A": torch.tensor([1.0, 2.0]), "m.shared.B": torch.tensor([[3.0]])}
    g = {"m.shared.A": torch.tensor([10.0, 20.0]), "m.shared.B": torch.tensor([[30.0]])}
    out = merge(p, g, 0.5, 0.25)
    assert torch.equal(out["m.shared.A"], torch.tensor([3.0, 6.0]))
    assert torch.equal(out["m.shared.B"], torch.tensor([[9.0]]))
    with pytest.raises(KeyError, match="differ"):
        merge(p, {"m.shared.A": g["m.shared.A"]}, 1.0, 1.0)


def quadratic(target: tuple[float, float], calls: list):
    """A loss whose minimum over the merge of e_1 (private) and e_2 (global) sits at ``target``."""
    def loss_of(adapters) -> float:
        x = adapters["x"]
        calls.append(x.clone())
        return float(((x - torch.tensor(target)) ** 2).sum())
    return loss_of


PRIVATE, GLOBAL = {"x": torch.tensor([1.0, 0.0])}, {"x": torch.tensor([0.0, 1.0])}


def test_search_finds_the_best_weights_within_its_budget() -> None:
    calls: list = []
    fusion = tune_weights(quadratic((0.3, 0.9), calls), PRIVATE, GLOBAL, FusionConfig(max_evals=40, l1=0.0))
    assert fusion.w_private == pytest.approx(0.3, abs=0.05) and fusion.w_global == pytest.approx(0.9, abs=0.05)
    assert fusion.evaluations == len(calls) <= 40
    # The first three evaluations are the starting simplex: both at full weight, private alone, global alone.
    assert [c.tolist() for c in calls[:3]] == [[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]


def test_search_respects_bounds_budget_and_penalty() -> None:
    calls: list = []
    fusion = tune_weights(quadratic((3.0, -1.0), calls), PRIVATE, GLOBAL, FusionConfig(max_evals=6, l1=0.0))
    assert len(calls) == fusion.evaluations <= 6
    assert all(0.0 <= v <= 1.5 for c in calls for v in c.tolist())
    # A flat loss: the L1 penalty alone decides, so the search moves toward smaller weights than it started at.
    flat = tune_weights(lambda a: 1.0, PRIVATE, GLOBAL, FusionConfig(max_evals=30, l1=0.1))
    assert flat.w_private + flat.w_global < 1.0 and flat.objective == pytest.approx(1.0 + 0.1 * (
        flat.w_private + flat.w_global))
    with pytest.raises(ValueError, match="max_evals"):
        tune_weights(lambda a: 1.0, PRIVATE, GLOBAL, FusionConfig(max_evals=0))


def test_dual_round_uploads_the_global_lora_and_scores_the_fusion(tmp_path) -> None:
    settings = compose(["model=tiny", "scenario=synthetic", "budget=smoke", "strategy=fdlora"])
    model, tok = load_base_model(settings.model, device="cpu")
    layers = inject(model, settings.adapter)
    shapes = {n: (m.in_features, m.out_features) for n, m in layers.items()}
    sent = payload(create_bank(shapes, settings.adapter, seed=0), {})
    private = {k: v + 0.01 for k, v in sent.items()}  # a private LoRA from an earlier round
    splits = client_splits(settings.scenario, "1", settings.federation.seed)
    job = ClientJob(model, tok, splits, settings, 1, "1", tmp_path, "run")
    result, new_private = train_dual_and_score(job, sent, private)

    assert result.adapters.keys() == sent.keys() == new_private.keys() and result.stats == {}
    assert all(k.endswith((".shared.A", ".shared.B")) for k in sent)  # one plain LoRA per module
    assert any(not torch.equal(sent[k], result.adapters[k]) for k in sent), "the global LoRA did not train"
    assert any(not torch.equal(private[k], new_private[k]) for k in sent), "the private LoRA did not train"
    assert any(not torch.equal(new_private[k], result.adapters[k]) for k in sent)  # the private one stays home
    m = result.metrics
    assert 0.0 <= m["fusion_w_private"] <= 1.5 and 0.0 <= m["fusion_w_global"] <= 1.5
    assert 1 <= m["fusion_evals"] <= settings.fusion.max_evals and 0.0 <= m["score"] <= 1.0
    assert {"train_loss", "private_train_loss", "experts_mean"} <= set(m)
    # The model was scored with the fused adapter: it still holds it.
    fused = merge(new_private, result.adapters, m["fusion_w_private"], m["fusion_w_global"])
    held = export_adapters(model)
    assert all(torch.allclose(held[k], fused[k]) for k in fused)


def test_dual_round_needs_an_eval_split(tmp_path) -> None:
    settings = compose(["model=tiny", "scenario=synthetic", "budget=smoke", "strategy=fdlora"])
    model, tok = load_base_model(settings.model, device="cpu")
    inject(model, settings.adapter)
    splits = client_splits(settings.scenario, "1", settings.federation.seed)
    splits.eval = []
    with pytest.raises(ValueError, match="eval split"):
        train_dual_and_score(ClientJob(model, tok, splits, settings, 1, "1", tmp_path, "run"), {}, {})
