"""An lm-evaluation-harness model class, registered as `xmodel2`, for any xmodel2 model folder.

lm-eval finds models only in its own registry and loads no plugins, so the class is registered
when this module is imported. Two ways to run it:

    python -m xmodel2.eval.lm_eval_adapter --model xmodel2 --model_args pretrained=DIR --tasks ...
        (lm-eval's own command line, with this module imported first), or, in Python,
    import xmodel2.eval.lm_eval_adapter; lm_eval.simple_evaluate(model="xmodel2", ...)

model_args: pretrained=DIR (required), dtype=float32|bfloat16, device=cpu|cuda, batch_size=N,
add_bos_token=true|false (default: the folder's tokenizer_config.json, as `xmodel2 eval` does),
max_length=N. The harness's TemplateLM does the tokenization (context + continuation encoded
together, then split); the token scoring is `xmodel2.eval.scoring.Scorer`, the same code
`xmodel2 eval` runs, so both routes give the same numbers on the same requests.
"""

from __future__ import annotations

import sys

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from xmodel2.eval.perplexity import rolling_loglikelihood
from xmodel2.eval.scoring import Scorer
from xmodel2.model.generate import continuation_text, cut_at_stop, generate_ids, stop_ids_for, stop_string_check

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _flag(value) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    return str(value).lower() in ("1", "true", "yes")


@register_model("xmodel2")
class XModel2LM(TemplateLM):
    def __init__(self, pretrained: str, dtype: str = "float32", device: str | None = None,
                 batch_size: int | str | None = 8, add_bos_token=None, max_length: int | None = None,
                 max_gen_toks: int = 256, **_ignored) -> None:
        super().__init__()
        from xmodel2.model.folder import load_model_folder
        from xmodel2.tokenizer import load_tokenizer

        import torch

        # lm-eval's command line asks for "cuda" by default; fall back as its own HF model does.
        if not device or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            device = "cpu"
        model = load_model_folder(pretrained, device=device, dtype=DTYPES[str(dtype)])
        tokenizer = load_tokenizer(pretrained)
        size = 8 if batch_size in (None, "auto") else int(str(batch_size).split(":")[0])
        self.scorer = Scorer(model, tokenizer, size, _flag(add_bos_token),
                             int(max_length) if max_length else None)
        self.max_gen_toks = int(max_gen_toks)

    # --- what TemplateLM needs ---
    @property
    def eot_token_id(self) -> int:
        eos = self.scorer.tokenizer.eos_id
        return eos if eos is not None else self.scorer.model.config.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        return self.scorer.prefix_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        bos = self.scorer.add_bos if add_special_tokens is None else add_special_tokens
        return self.scorer.tokenizer.encode(string, add_bos=bool(bos))

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        results = self.scorer.loglikelihood_tokens([(ctx, cont) for _, ctx, cont in requests])
        for (key, _, _), result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for request in requests:
            (text,) = request.args
            total = rolling_loglikelihood(self.scorer, self.scorer.tokenizer.encode(text))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy decoding until a stop string (or EOS), max_gen_toks new tokens at most."""
        scorer, out = self.scorer, []
        for request in requests:
            context, kwargs = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            prompt = scorer.encode(context)[-(scorer.max_length - max_new):]
            new = generate_ids(scorer.model, [prompt], max_new, stop_ids=stop_ids_for(scorer.model, scorer.tokenizer),
                               should_stop=stop_string_check(scorer.tokenizer, until))[0]
            text = cut_at_stop(continuation_text(scorer.tokenizer, prompt, new), until)
            self.cache_hook.add_partial("generate_until", (context, kwargs), text)
            out.append(text)
        return out

    @property
    def tokenizer_name(self) -> str:
        return str(self.scorer.tokenizer.path)


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with the `xmodel2` model registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
