"""Inference weight formats: the int8 layer computes x @ dequant(q).T; a converted model decodes
(eagerly and compiled, the same tokens); on a real model int8 barely moves perplexity."""

import gzip
import json

import pytest
import torch

from eval_fixtures import skip_without_fast_bf16, smollm2_dir  # noqa: F401  (session fixture)
from xmodel2.data.corpus import CORPUS_DIR
from xmodel2.model.config import ModelConfig
from xmodel2.model.folder import build_model, load_model_folder
from xmodel2.model.generate import generate_ids
from xmodel2.model.quantize import Int8Linear, convert_weights
from xmodel2.train.loss import per_token_loss

WIKI_TEST = CORPUS_DIR / "wiki-test.jsonl.gz"


def small_model(tied=True):
    config = ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                         num_heads=4, num_kv_heads=2, tie_embeddings=tied, mup={"dim_model_base": 32})
    return build_model(config, seed=5).eval()


def test_int8_linear_is_the_dequantised_matmul_on_both_paths():
    weight = torch.randn(96, 64, generator=torch.Generator().manual_seed(0))
    weight[3] *= 50  # rows have their own scales: a large row does not coarsen the others
    layer = Int8Linear(weight)
    assert layer.qweight.dtype == torch.int8
    assert layer.qweight.abs().amax(dim=1).ge(126).all()  # each row uses the whole range
    dequant = layer.qweight.float() * layer.scales.float()[:, None]
    assert (dequant - weight).abs().max(dim=1).values.le(layer.scales.float() * 0.51).all()
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(1))
    x = x.bfloat16().float()  # the values the bf16 kernel sees
    want = x @ dequant.T
    fused = layer(x.bfloat16())  # the CPU int8 kernel (bf16 activations)
    fallback = layer(x)  # any other dtype or device dequantises on the fly
    assert fused.shape == fallback.shape == (2, 5, 96)
    assert (fused.float() - want).norm() / want.norm() < 1e-2  # bf16 output rounding
    many = torch.randn(40, 64, generator=torch.Generator().manual_seed(2)).bfloat16()  # prefill rows
    dense = layer(many).float()
    assert (dense - many.float() @ dequant.T).norm() / dense.norm() < 1e-2
    torch.testing.assert_close(fallback, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("tied", [True, False])
def test_converted_model_keeps_the_function_and_decodes_compiled_as_eager(tied):
    model = small_model(tied)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        want = model(ids)
    int8 = convert_weights(small_model(tied), "int8")
    assert isinstance(int8.lm_head, Int8Linear) and int8.activation_dtype == torch.bfloat16
    assert not any(isinstance(m, torch.nn.Linear) for m in int8.modules())
    with torch.inference_mode():
        got = int8(ids).float()
    assert (got - want).norm() / want.norm() < 0.05
    prompts = [ids[0].tolist(), ids[1, :5].tolist()]  # different lengths: left padding
    eager = generate_ids(int8, prompts, 8)
    assert all(len(row) == 8 for row in eager)
    assert generate_ids(int8, prompts, 8, compile=True) == eager
    bf16 = convert_weights(small_model(tied), "bf16")
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert convert_weights(bf16, "fp32").activation_dtype == torch.float32
    with pytest.raises(ValueError, match="int4"):
        convert_weights(small_model(tied), "int4")


def wiki_test_ids(tokenizer, tokens: int) -> torch.Tensor:
    ids: list[int] = []
    with gzip.open(WIKI_TEST, "rt", encoding="utf-8") as lines:
        for line in lines:
            ids += tokenizer.encode(json.loads(line)["text"], add_bos=False)
            if len(ids) > tokens:
                break
    return torch.tensor(ids[:tokens + 1])


def test_int8_smollm2_keeps_perplexity_and_top1(smollm2_dir):  # noqa: F811
    skip_without_fast_bf16()  # int8 and bf16 both multiply bf16 activations
    from xmodel2.tokenizer import load_tokenizer

    ids = wiki_test_ids(load_tokenizer(smollm2_dir), 4 * 256).view(-1)
    inputs = ids[:-1].view(4, 256)
    targets = ids[1:].view(4, 256)
    results = {}
    for weight_format in ("fp32", "bf16", "int8"):
        model = convert_weights(load_model_folder(smollm2_dir), weight_format)
        with torch.inference_mode():
            logits = model(inputs).float()
            losses = per_token_loss(model, inputs, targets)
        results[weight_format] = (losses.mean().exp().item(), logits.argmax(-1))
    (ppl_fp32, top1_fp32), (ppl_bf16, top1_bf16), (ppl_int8, top1_int8) = results.values()
    agreement = (top1_fp32 == top1_int8).float().mean().item()
    agreement_bf16 = (top1_fp32 == top1_bf16).float().mean().item()
    print(f"SmolLM2 wiki-test ppl fp32 {ppl_fp32:.3f} bf16 {ppl_bf16:.3f} int8 {ppl_int8:.3f}; "
          f"top-1 agreement with fp32: bf16 {agreement_bf16:.4f} int8 {agreement:.4f}")
    assert ppl_fp32 < 60  # the real model reads the text
    assert abs(ppl_int8 / ppl_fp32 - 1) < 0.01
    # Near-ties flip under any rounding: bf16 alone changes 3-4% of top-1 tokens on this text.
    assert agreement > 0.93 and agreement > agreement_bf16 - 0.03
