"""Feature-level distillation: `losses.hidden_mse` / `losses.attention_kl` against hand values, forward hooks by module
path (`hf_distill.hooks`), layer maps, projections (trained, saved and reloaded), and the layer objectives on text
tasks (language, classification), where hidden states exist too.

Expected values are computed by hand (literals with the arithmetic in a comment, or `math` on the formula).
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from hf_distill import DistillationTrainer, losses
from hf_distill.hooks import capture_features, find_module
from hf_distill.objectives import build_objectives, normalize_objective_specs
from hf_distill.objectives.features import pool_features, resolve_layer_map
from hf_distill.signals import Signals, feature_paths, feature_request
from hf_distill.tasks import resolve_task
from tests.helpers import (  # noqa: F401  (single_thread: fixture)
    config,
    image_dataset,
    lm_dataset,
    pad_collate,
    single_thread,
    tiny_bert_classifier,
    tiny_gpt2,
    tiny_vit,
)

pytestmark = pytest.mark.usefixtures("single_thread")


# ---- losses.hidden_mse ------------------------------------------------------------------------------------------


def test_hidden_mse_hand_values_mask_and_reduction():
    s = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [3.0, 3.0]]])  # [B=1, L=3, H=2]
    t = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]])
    # per position: (0 + 4)/2 = 2, (0 + 1)/2 = 0.5, (9 + 9)/2 = 9
    assert losses.hidden_mse(s, t).item() == pytest.approx((2 + 0.5 + 9) / 3)
    mask = torch.tensor([[True, True, False]])
    assert losses.hidden_mse(s, t, mask=mask).item() == pytest.approx(1.25)
    assert losses.hidden_mse(s, t, mask=mask, reduction="sum").item() == pytest.approx(2.5)
    assert losses.hidden_mse(s, s).item() == 0.0
    assert losses.hidden_mse(s, t, mask=torch.zeros(1, 3, dtype=torch.bool)).item() == 0.0  # nothing counts: 0
    with pytest.raises(ValueError, match="same shape"):
        losses.hidden_mse(s, t[..., :1])
    with pytest.raises(ValueError, match="`mask` must have shape"):
        losses.hidden_mse(s, t, mask=torch.ones(3, dtype=torch.bool))


# ---- losses.attention_kl ----------------------------------------------------------------------------------------


def test_attention_kl_hand_values():
    s = torch.tensor([[[[0.5, 0.5]]]])  # [B=1, heads=1, Lq=1, Lk=2]
    t = torch.tensor([[[[0.25, 0.75]]]])
    # KL(t || s) = 0.25·ln(0.25/0.5) + 0.75·ln(0.75/0.5)
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert losses.attention_kl(s, t).item() == pytest.approx(expected, rel=1e-6)
    assert losses.attention_kl(t, t).item() == pytest.approx(0.0, abs=1e-7)
    # A key the teacher does not attend to (probability 0) contributes 0: KL((1, 0) || (½, ½)) = ln 2.
    assert losses.attention_kl(s, torch.tensor([[[[1.0, 0.0]]]])).item() == pytest.approx(math.log(2), rel=1e-6)
    # A student probability of 0 where the teacher's is not: large but finite (log of eps).
    assert math.isfinite(losses.attention_kl(torch.tensor([[[[1.0, 0.0]]]]), t).item())


def test_attention_kl_heads_rows_and_mask():
    # Equal head counts: the mean over heads of each head's KL.
    s = torch.tensor([[[[0.5, 0.5]], [[0.5, 0.5]]]])  # 2 heads
    t = torch.tensor([[[[0.25, 0.75]], [[0.5, 0.5]]]])
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert losses.attention_kl(s, t).item() == pytest.approx(kl / 2, rel=1e-6)
    # Different head counts: heads averaged first. Teacher 1 head (0.25, 0.75), student 2 heads averaging to
    # ((0.5 + 0.0)/2, (0.5 + 1.0)/2) = (0.25, 0.75): the same distribution, so 0.
    s2 = torch.tensor([[[[0.5, 0.5]], [[0.0, 1.0]]]])
    assert losses.attention_kl(s2, t[:, :1]).item() == pytest.approx(0.0, abs=1e-7)
    # Rows: the mean over counted query rows; mask [B, Lq].
    s3 = torch.tensor([[[[0.5, 0.5], [0.5, 0.5]]]])  # one head, 2 query rows
    t3 = torch.tensor([[[[0.25, 0.75], [0.5, 0.5]]]])
    assert losses.attention_kl(s3, t3).item() == pytest.approx(kl / 2, rel=1e-6)
    assert losses.attention_kl(s3, t3, mask=torch.tensor([[True, False]])).item() == pytest.approx(kl, rel=1e-6)
    assert losses.attention_kl(s3, t3, reduction="sum").item() == pytest.approx(kl, rel=1e-6)
    with pytest.raises(ValueError, match="attentions must be"):
        losses.attention_kl(s3, t3[..., :1])


# ---- hooks ------------------------------------------------------------------------------------------------------


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2), nn.Tanh()))


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_capture_features_returns_the_named_outputs_and_removes_its_hooks():
    net, x = _net(), torch.randn(5, 3)
    with capture_features(net, ["0", "2.0"]) as features:
        out = net(x)
        assert _hook_count(net) == 2
    assert _hook_count(net) == 0
    assert torch.equal(features["0"], net[0](x))
    assert torch.equal(features["2.0"], net[2][0](torch.relu(net[0](x))))
    assert torch.equal(out, torch.tanh(features["2.0"]))
    assert features["0"].requires_grad  # attached to the graph: a loss on it trains the model
    net(x)  # no hook left behind
    assert _hook_count(net) == 0


def test_capture_features_removes_its_hooks_after_an_exception():
    net = _net()
    with pytest.raises(RuntimeError, match="boom"):
        with capture_features(net, ["0", "2"]):
            assert _hook_count(net) == 2
            raise RuntimeError("boom")
    assert _hook_count(net) == 0
    with pytest.raises(RuntimeError):  # a failing forward pass too
        with capture_features(net, ["0"]):
            net(torch.randn(2, 7))
    assert _hook_count(net) == 0


def test_unknown_module_path_names_it_and_suggests_close_matches():
    net = _net()
    expected = r"no module at path '2\.3'.*Did you mean '2\.\d'\?.*Submodules of '2': 2\.0, 2\.1"
    with pytest.raises(ValueError, match=expected):
        with capture_features(net, ["0", "2.3"]):
            pass
    assert _hook_count(net) == 0  # paths are checked before any hook is registered
    assert find_module(net, "2.1") is net[2][1]


def test_feature_requests_round_trip():
    requires = frozenset({"logits", feature_request("a.b"), feature_request("c")})
    assert feature_paths(requires) == ["a.b", "c"]
    assert feature_paths(frozenset({"logits"})) == []


def test_pool_features_shapes():
    assert pool_features(torch.ones(2, 5)).shape == (2, 5)
    cnn = torch.arange(2 * 3 * 2 * 2, dtype=torch.float).reshape(2, 3, 2, 2)
    assert torch.equal(pool_features(cnn), cnn.mean(dim=(2, 3)))  # global average pooling, channels first
    tokens = torch.randn(2, 4, 6)
    assert torch.equal(pool_features(tokens, "cls"), tokens[:, 0])
    real = torch.tensor([[True, True, False, False], [True, True, True, True]])
    pooled = pool_features(tokens, "mean", real)
    assert torch.allclose(pooled[0], tokens[0, :2].mean(0)) and torch.allclose(pooled[1], tokens[1].mean(0))
    assert pool_features(cnn, "flatten").shape == (2, 12)
    with pytest.raises(ValueError, match="pool='cls'"):
        pool_features(cnn, "cls")


# ---- layer maps -------------------------------------------------------------------------------------------------


def test_layer_maps_resolve_as_documented():
    # hidden states (index 0 = embeddings): 2 student layers, 6 teacher layers → m ↔ round(3m)
    assert resolve_layer_map("uniform", 3, 7) == [(0, 0), (1, 3), (2, 6)]
    assert resolve_layer_map("uniform", 3, 4) == [(0, 0), (1, 2), (2, 3)]  # 1·3/2 = 1.5 rounds up
    assert resolve_layer_map("uniform", 5, 3) == [(0, 0), (1, 1), (2, 1), (3, 2), (4, 2)]  # deeper student
    assert resolve_layer_map("uniform", 1, 4) == [(0, 0)]  # embeddings only
    # attentions (index 0 = first layer): 2 and 6 layers → layer j ↔ 3j, i.e. indices (0, 2), (1, 5)
    assert resolve_layer_map("uniform", 2, 6, embeddings_first=False) == [(0, 2), (1, 5)]
    assert resolve_layer_map("last", 3, 7) == [(2, 6)]
    assert resolve_layer_map([[0, 0], [-1, -1], [1, 4]], 3, 7) == [(0, 0), (2, 6), (1, 4)]
    with pytest.raises(ValueError, match=r"`layers` pair \[3, 0\] is out of range"):
        resolve_layer_map([[3, 0]], 3, 7)


def test_layer_and_feature_objective_parameters_are_checked():
    with pytest.raises(ValueError, match="`layers` must be"):
        normalize_objective_specs([{"name": "hidden_mse", "layers": "every"}])
    with pytest.raises(ValueError, match="`layers` must be"):
        normalize_objective_specs([{"name": "attention_kl", "layers": [[0, 1, 2]]}])
    with pytest.raises(ValueError, match="`tokens` must be"):
        normalize_objective_specs([{"name": "hidden_mse", "tokens": "first"}])
    with pytest.raises(ValueError, match="`student_module` must name a module"):
        normalize_objective_specs([{"name": "feature_mse", "teacher_module": "x"}])
    spec = normalize_objective_specs([{"name": "feature_mse", "student_module": "a.b", "teacher_module": "c"}])
    assert build_objectives(spec)[0].objective.requires == {"features:a.b", "features:c"}


# ---- layer objectives on text tasks -----------------------------------------------------------------------------


def test_hidden_mse_on_a_causal_lm_counts_the_labelled_tokens(tmp_path):
    """Language models count tokens: the loss is the sum over counted tokens of the per-token MSE, the state at
    position t being the one that predicts token t + 1 (the item mask is shifted by one)."""
    student, teacher = tiny_gpt2(2, seed=1), tiny_gpt2(2, seed=2)
    args = config(tmp_path, objectives=[{"name": "hidden_mse", "layers": [[1, 2]]}])
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
    batch = pad_collate([lm_dataset([5, 3, 4])[i] for i in range(3)])
    terms, s, t = trainer.distillation_terms(student, batch)
    mask = batch["labels"][:, 1:] != -100
    expected = losses.hidden_mse(s.hidden_states[1][:, :-1], t.hidden_states[2][:, :-1], mask=mask, reduction="sum")
    assert terms["hidden_mse"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert not trainer.objectives[0].objective.projections[0].__class__.__name__ == "Linear"  # equal widths


def test_hidden_mse_and_attention_kl_on_text_classification_skip_padding(tmp_path):
    """Classifiers count examples: the mean over the batch's real tokens (``attention_mask``) times the number of
    examples; ``tokens='cls'`` sums the position-0 losses."""
    student, teacher = tiny_bert_classifier(2, seed=1), tiny_bert_classifier(2, seed=2)
    objectives = [{"name": "hidden_mse", "layers": "last"}, {"name": "hidden_mse", "layers": "last", "tokens": "cls"},
                  {"name": "attention_kl"}]
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_path, objectives=objectives))
    assert student.config._attn_implementation == "eager"  # switched by attention_kl's setup
    batch = pad_collate([lm_dataset([5, 3, 4])[i] for i in range(3)])
    batch["labels"] = torch.tensor([0, 1, 2])
    terms, s, t = trainer.distillation_terms(student, batch)
    real = batch["attention_mask"].bool()
    hs, ht = s.hidden_states[-1], t.hidden_states[-1]
    assert terms["hidden_mse"].item() == pytest.approx(3 * losses.hidden_mse(hs, ht, mask=real).item(), rel=1e-5)
    assert terms["hidden_mse_1"].item() == pytest.approx(losses.hidden_mse(hs[:, 0], ht[:, 0], reduction="sum").item(),
                                                         rel=1e-5)
    expected = 3 * losses.attention_kl(s.attentions[-1], t.attentions[-1], mask=real)
    assert terms["attention_kl"].item() == pytest.approx(expected.item(), rel=1e-5)


# ---- projections: trained with the student, saved and reloaded ----------------------------------------------------


def test_projection_is_trained_saved_and_reloaded(tmp_path):
    from hf_distill.trainer import OBJECTIVES_WEIGHTS_NAME

    student, teacher = tiny_vit(hidden=16, layers=1, seed=1), tiny_vit(hidden=32, layers=2, seed=0)
    specs = [{"name": "hidden_mse", "layers": "last"}]
    args = config(tmp_path, per_device_train_batch_size=4, max_steps=2, learning_rate=0.05, objectives=specs)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=image_dataset(8))
    projection = trainer.objectives[0].objective.projections[0]
    assert isinstance(projection, nn.Linear) and projection.weight.shape == (32, 16)
    before = projection.weight.detach().clone()
    trainer.train()
    assert not torch.equal(projection.weight, before)  # trained with the student
    trainer.save_model(str(tmp_path / "saved"))

    fresh = build_objectives(normalize_objective_specs(specs))
    torch.manual_seed(123)  # a different initialisation, replaced by the saved one
    fresh[0].objective.setup(resolve_task("vision", model=student), student, teacher)
    fresh.load_state_dict(load_file(str(tmp_path / "saved" / OBJECTIVES_WEIGHTS_NAME)))
    x = torch.randn(3, 5, 16)
    assert torch.equal(fresh[0].objective.projections[0](x), projection(x))


def test_objectives_need_signals_the_task_provides(tmp_path):
    """Feature objectives read Signals only: hand-built signals show the item arithmetic without any model."""
    from hf_distill.objectives.features import _sum_over_items

    s, t = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    examples = Signals(mask=torch.tensor([True, False]))
    # mean over the counted example's 3 positions (each 1) times 1 counted example
    assert _sum_over_items(losses.hidden_mse, s, t, examples, row_dim=1).item() == pytest.approx(1.0)
    tokens = Signals(mask=torch.tensor([[True, True], [True, False]]))  # token items covering 2 of 3 positions
    assert _sum_over_items(losses.hidden_mse, s, t, tokens, row_dim=1).item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="tokens='cls'"):
        _sum_over_items(losses.hidden_mse, s, t, tokens, row_dim=1, tokens="cls")


@pytest.mark.parametrize("launch", ["arguments", "accelerate"])
def test_a_trained_projection_is_refused_under_deepspeed(tmp_path, monkeypatch, launch):
    """DeepSpeed's optimizer takes only the model's parameters: an objective's projection failed inside the engine
    (ZeRO-3: no partition attributes, ZeRO-2: an unknown parameter group; found running the embedding-align recipe),
    so it is refused before any work."""
    student, teacher = tiny_vit(hidden=16, layers=1, seed=1), tiny_vit(hidden=32, layers=2, seed=0)
    args = config(tmp_path, objectives=[{"name": "hidden_mse", "layers": "last"}])
    if launch == "arguments":
        monkeypatch.setattr(args, "deepspeed", "ds_zero2.json")  # as given, without needing deepspeed installed
    else:
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ValueError, match=r"'hidden_mse' train parameters of their own .* DeepSpeed's optimizer"):
        DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=image_dataset(8))
