"""The chunked next-token loss equals plain cross-entropy, in value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from xmodel2.data.sft_mask import IGNORE_INDEX
from xmodel2.model.config import ModelConfig
from xmodel2.model.folder import build_model
from xmodel2.train.loss import next_token_loss


def small_model():
    config = ModelConfig(vocab_size=300, hidden_size=64, intermediate_size=160, num_layers=2,
                         num_heads=4, num_kv_heads=2, mup={"dim_model_base": 32})
    return build_model(config, seed=3)


def reference_loss(model, ids, targets):
    logits = model(ids).float()
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)


def test_chunked_loss_matches_plain_cross_entropy_and_grads():
    model = small_model()
    ids = torch.randint(0, 300, (3, 40), generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 300, (3, 40), generator=torch.Generator().manual_seed(1))
    targets[0, :7] = IGNORE_INDEX  # masked prompt tokens are not counted
    expected = reference_loss(model, ids, targets)
    expected.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    got = next_token_loss(model, ids, targets, chunk_rows=16)  # 120 rows in 8 chunks
    got.backward()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, want[name], rtol=1e-5, atol=1e-7, msg=name)


def test_default_chunking_by_vocabulary_and_no_grad_path():
    model = small_model()
    ids = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(next_token_loss(model, ids, ids), reference_loss(model, ids, ids))


def test_compiled_loss_matches_eager_in_value_and_grads_whole_and_chunked():
    model = small_model()
    ids = torch.randint(0, 300, (3, 40), generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 300, (3, 40), generator=torch.Generator().manual_seed(1))
    targets[1, :5] = IGNORE_INDEX
    expected = reference_loss(model, ids, targets)
    expected.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    for chunk_rows in (None, 48):  # one piece, and 120 rows in 3 chunks (the last one shorter)
        model.zero_grad()
        got = next_token_loss(model, ids, targets, chunk_rows=chunk_rows, compile_loss=True)
        got.backward()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        for name, param in model.named_parameters():
            torch.testing.assert_close(param.grad, want[name], rtol=1e-4, atol=1e-6, msg=name)


def plain_loss_sum(hidden, weight, targets, multiplier):
    """The unfused formulation: the LM head under autocast, then fp32 cross-entropy."""
    logits = F.linear(hidden * multiplier, weight).float()
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


@pytest.mark.parametrize("compiled", [False, True], ids=["blockwise", "compiled"])
def test_fused_head_and_loss_equals_cross_entropy_under_bf16_autocast(compiled):
    from xmodel2.train.loss import linear_cross_entropy_sum

    gen = torch.Generator().manual_seed(4)
    hidden = torch.randn(300, 64, generator=gen, requires_grad=True)
    weight = (0.05 * torch.randn(5000, 64, generator=gen)).requires_grad_()  # 2**21 / 5000: 419-row blocks
    targets = torch.randint(0, 5000, (300,), generator=gen)
    targets[::7] = IGNORE_INDEX
    fused = lambda h, w, t, m: linear_cross_entropy_sum(h, w, t, m, compiled=compiled)  # noqa: E731
    results = []
    for loss_sum in (plain_loss_sum, fused):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            total = loss_sum(hidden, weight, targets, 0.5)
        (0.25 * total).backward(retain_graph=True)
        results.append((total.detach(), hidden.grad, weight.grad))
        hidden.grad = weight.grad = None
        assert total.dtype == torch.float32
    (want, *want_grads), (got, *got_grads) = results
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)
    for have, expected in zip(got_grads, want_grads):
        assert have.dtype == torch.float32
        assert (have - expected).norm() / expected.norm() < 1e-3
    total.backward()  # the gradients were saved, not computed from overwritten logits: again
    torch.testing.assert_close(hidden.grad, 4 * got_grads[0])


def test_weight_gradient_summed_over_chunks_in_fp32():
    """Chunked bf16: per-chunk weight gradients are summed in fp32 and rounded once, so the
    result stays as close to the fp32 gradient as one unchunked bf16 matmul."""
    from xmodel2.train.loss import linear_cross_entropy_sum

    gen = torch.Generator().manual_seed(5)
    hidden = torch.randn(512, 32, generator=gen, requires_grad=True)
    weight = (0.1 * torch.randn(700, 32, generator=gen)).requires_grad_()
    targets = torch.randint(0, 700, (512,), generator=gen)
    grads = {}
    for name, chunk_rows, dtype in (("fp32", None, None), ("bf16", None, torch.bfloat16),
                                    ("bf16 chunked", 32, torch.bfloat16)):
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            linear_cross_entropy_sum(hidden, weight, targets, chunk_rows=chunk_rows).backward()
        grads[name] = weight.grad
        weight.grad = hidden.grad = None
    error = {name: float((grads[name] - grads["fp32"]).norm() / grads["fp32"].norm())
             for name in ("bf16", "bf16 chunked")}
    assert error["bf16 chunked"] < 1.5 * error["bf16"], error


def test_eager_loss_exact_where_the_target_probability_underflows():
    """The eager path takes -log(softmax) of the target; where that probability is tiny or
    underflows to 0 in fp32 (a logit gap of 100 or 300), the loss is recomputed exactly."""
    from xmodel2.train.loss import linear_cross_entropy_sum

    gen = torch.Generator().manual_seed(6)
    hidden = torch.randn(6, 16, generator=gen)
    weight = torch.randn(50, 16, generator=gen)
    hidden[0] = 0.0
    hidden[0, 0], hidden[1, 0] = 10.0, 30.0
    weight[:, 0] = 0.0
    weight[7, 0] = 10.0  # row 0: target 3 scores 100 below token 7; row 1: 300 below
    targets = torch.tensor([3, 3, 1, 2, IGNORE_INDEX, 4])
    hidden.requires_grad_()
    got = linear_cross_entropy_sum(hidden, weight, targets)
    want = F.cross_entropy(hidden.detach() @ weight.T, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    assert torch.isfinite(got)
    torch.testing.assert_close(got.detach(), want, rtol=1e-6, atol=1e-4)
    got.backward()
    assert torch.isfinite(hidden.grad).all()
