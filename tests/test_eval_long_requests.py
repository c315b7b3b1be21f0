"""Requests longer than the model's window are scored on what the window can predict."""

from types import SimpleNamespace

import torch

from xmodel2.eval.scoring import Scorer
from xmodel2.model.config import ModelConfig
from xmodel2.model.folder import build_model


def test_continuation_longer_than_window_scores_its_last_tokens():
    config = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1,
                         num_heads=2, num_kv_heads=1, max_position_embeddings=16,
                         mup={"dim_model_base": 32})
    model = build_model(config, seed=0).eval()
    # token-level scoring never encodes text: only the tokenizer's special ids are read
    ids_only = SimpleNamespace(bos_id=1, eos_id=2)
    scorer = Scorer(model, tokenizer=ids_only, batch_size=4, add_bos=False, max_length=16)
    context, long_continuation = [1, 2, 3], list(range(4, 40))
    (total, _), = scorer.loglikelihood_tokens([(context, long_continuation)])
    # the same as scoring the last 16 continuation tokens after the 16-token window before them
    window = (context + long_continuation)[-17:]
    logprobs = torch.log_softmax(model(torch.tensor([window[:-1]])).float(), -1)[0]
    expected = logprobs.gather(-1, torch.tensor(window[1:])[:, None]).sum().item()
    assert abs(total - expected) < 1e-4
