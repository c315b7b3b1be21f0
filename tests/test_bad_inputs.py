"""Hostile input, one table: every bad input ends in exit status 2 and exactly one line on stderr
that names the file, key or path, and changes nothing outside the test's own folder.

Each row runs the real command line (`xmodel2.cli.main`) with the test's temporary folder as the
working directory; rows that need a read-only or full file system run it in a subprocess under
`unshare --mount` with a tmpfs. The shared inputs (a tiny model folder, a tokenizer, a tiny run
config and a finished two-step run) are built once and checked to stay unchanged too.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from run_fixtures import slice_jsonl
from xmodel2.cli import main
from xmodel2.model.config import ModelConfig
from xmodel2.model.folder import build_model, save_model_folder

SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
TEXT = ("The quick brown fox jumps over the lazy dog. A model reads text and writes text. "
        "Small models learn fast on a laptop; large models learn more. ") * 20
CONTEXT = 64  # the tiny model's max_position_embeddings
INVALID_UTF8 = os.fsdecode(b"caf\xe9")  # how Python hands a non-UTF-8 argument to a program


# ---- shared inputs -------------------------------------------------------------------------------

def write_tokenizer(folder: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([TEXT], trainer)
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        '{"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": true}')
    return folder


TINY_RUN = """\
    model: {hidden_size: 64, intermediate_size: 160, num_layers: 2, num_heads: 2, num_kv_heads: 1,
            max_position_embeddings: 64, mup: {dim_model_base: 32}}
    tokenizer: {path: tok/tokenizer.json}
    data:
      seq_len: 32
      workers: 1
      sources:
        wiki: {inputs: [wiki.jsonl]}
        math: {inputs: [math.jsonl]}
    train: {steps: 2, lr: 0.01, warmup_steps: 1, batch_size: 8, micro_batch_size: 4, precision: fp32,
            log_every: 1, val_every: 100, seed: 0}
    stages:
      - {name: stable, mixture: {wiki: 0.8, math: 0.2}}
      - {name: decay, steps: 1, decay: {shape: exponential, half_life: 3}, mixture: {wiki: 0.5, math: 0.5}}
    checkpoint: {every: 2, keep: 0}
    """


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """The shared, read-only inputs of every row."""
    root = tmp_path_factory.mktemp("bad-inputs")
    write_tokenizer(root / "tok")
    config = ModelConfig(vocab_size=400, hidden_size=64, intermediate_size=160, num_layers=2, num_heads=4,
                         num_kv_heads=2, max_position_embeddings=CONTEXT, bos_token_id=1, eos_token_id=2,
                         mup={"dim_model_base": 32})
    save_model_folder(build_model(config, seed=1).eval(), root / "model", tokenizer_dir=root / "tok")
    slice_jsonl("wiki-train", root / "wiki.jsonl", 60)
    slice_jsonl("math", root / "math.jsonl", 30)
    (root / "tiny.yaml").write_text(textwrap.dedent(TINY_RUN))
    assert main(["pretrain", str(root / "tiny.yaml"), "--out", str(root / "run"), "--no-progress",
                 "--no-finish"]) == 0
    (root / "quiz.jsonl").write_text(json.dumps({"query": "Q: 2+2?\nA:", "choices": ["4", "5"], "gold": 0})
                                     + "\n")
    return root


# ---- setups: files a row needs in its own folder ---------------------------------------------------

def write(name: str, data: bytes | str) -> Callable[[Path, Path], None]:
    def setup(ws: Path, tmp: Path) -> None:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            (tmp / name).write_text(data.format(ws=ws, tmp=tmp))
        else:
            (tmp / name).write_bytes(data)
    return setup


def config_with(old: str, new: str) -> Callable[[Path, Path], None]:
    """TMP/run.yaml: the tiny run config with one edit (`new` may name {ws} and {tmp}), its other
    paths pointing into the shared folder."""
    def setup(ws: Path, tmp: Path) -> None:
        text = textwrap.dedent(TINY_RUN)
        assert old in text, old
        text = text.replace(old, new.format(ws=ws, tmp=tmp)).replace("tok/", f"{ws}/tok/")
        text = text.replace("[wiki.jsonl]", f"[{ws}/wiki.jsonl]").replace("[math.jsonl]", f"[{ws}/math.jsonl]")
        (tmp / "run.yaml").write_text(text)
    return setup


def copy_of_model(edit: Callable[[Path], None]) -> Callable[[Path, Path], None]:
    def setup(ws: Path, tmp: Path) -> None:
        shutil.copytree(ws / "model", tmp / "model")
        edit(tmp / "model")
    return setup


def copy_of_run(edit: Callable[[Path], None] = lambda run: None) -> Callable[[Path, Path], None]:
    def setup(ws: Path, tmp: Path) -> None:
        shutil.copytree(ws / "run", tmp / "run")
        edit(tmp / "run")
    return setup


def both(*setups) -> Callable[[Path, Path], None]:
    def setup(ws: Path, tmp: Path) -> None:
        for one in setups:
            one(ws, tmp)
    return setup


def truncated_gzip(ws: Path, tmp: Path) -> None:
    data = gzip.compress((json.dumps({"query": "Q: 1?\nA:", "choices": ["a", "b"], "gold": 0}) + "\n").encode() * 200)
    (tmp / "quiz.jsonl.gz").write_bytes(data[: len(data) // 2])


def gguf_cut_in_header(ws: Path, tmp: Path) -> None:
    # magic, version 3, tensor count, then a metadata count cut after 3 of its 8 bytes
    (tmp / "cut.gguf").write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (1).to_bytes(8, "little") + b"\x02\x00\x00")


def set_config_json(value) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        (folder / "config.json").write_text(json.dumps(value(json.loads((folder / "config.json").read_text()))))
    return edit


def index_that_is_a_list(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text("[]")


def empty_optimizer(run: Path) -> None:
    newest = sorted((run / "checkpoints").glob("step-*"))[-1]
    (newest / "optimizer.pt").write_bytes(b"")


def alias_bomb() -> str:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
              f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]" for i in range(8)]
    return "\n".join(lines) + "\n"


# ---- the table -----------------------------------------------------------------------------------

@dataclass
class Case:
    id: str
    argv: list[str]
    names: str  # the file, key or path the one line must name ({ws} and {tmp} are filled in)
    setup: Callable[[Path, Path], None] | None = None
    stdin: bytes | None = None
    mount: str | None = None  # "ro": {tmp}/mnt is a read-only tmpfs; "full": a tmpfs with no space left
    may_touch: tuple[str, ...] = field(default=())  # names that may change (a run's lock and mark)


CFG = "{ws}/tiny.yaml"
PRETRAIN = ["pretrain", CFG, "--out", "{tmp}/out", "--no-progress", "--no-finish"]
MODEL = "{ws}/model"
GEN = ["generate", MODEL, "--prompt", "The"]
RESUME = ["pretrain", CFG, "--out", "{tmp}/run", "--no-progress", "--no-finish", "--train.steps=4"]

CASES = [
    # config values, each blamed on its override (item 8)
    Case("lr-nan", PRETRAIN + ["--train.lr=nan"], "--train.lr=nan: must be a finite number > 0"),
    Case("lr-negative", PRETRAIN + ["--train.lr=-0.01"], "--train.lr=-0.01"),
    Case("lr-inf", PRETRAIN + ["--train.lr=.inf"], "--train.lr=.inf"),
    Case("beta1-1.5", PRETRAIN + ["--train.beta1=1.5"], "--train.beta1=1.5: must be a finite number in [0, 1)"),
    Case("beta2-1", PRETRAIN + ["--train.beta2=1"], "--train.beta2=1"),
    Case("warmup-negative", PRETRAIN + ["--train.warmup_steps=-5"], "--train.warmup_steps=-5"),
    Case("half-life-0", PRETRAIN + ["--stages.1.decay.half_life=0"], "--stages.1.decay.half_life=0"),
    Case("decay-floor-2", PRETRAIN + ["--stages.1.decay.floor=2"], "--stages.1.decay.floor=2"),
    Case("decay-shape", PRETRAIN + ["--stages.1.decay.shape=square"], "--stages.1.decay.shape=square"),
    Case("checkpoint-every-0", PRETRAIN + ["--checkpoint.every=0"], "--checkpoint.every=0"),
    Case("mixture-share-nan", PRETRAIN + ["--stages.0.mixture.math=.nan"], "--stages.0.mixture.math=.nan"),
    Case("mixture-share-negative", PRETRAIN + ["--stages.0.mixture.math=-0.2"], "--stages.0.mixture.math=-0.2"),
    Case("mixture-shares-sum", PRETRAIN + ["--stages.0.mixture.math=0.5"], "stages.0.mixture: shares add up"),
    Case("mixture-unknown-source", PRETRAIN + ["--stages.0.mixture.code=0.1"], "unknown source 'code'"),
    Case("vocab-size-huge", ["pretrain", "--out", "{tmp}/out", "--tokenizer.vocab_size=99999999999"],
         "--tokenizer.vocab_size=99999999999"),
    Case("steps-0", PRETRAIN + ["--train.steps=0"], "--train.steps=0"),
    Case("steps-not-a-number", PRETRAIN + ["--train.steps=abc"], "--train.steps=abc"),
    Case("batch-0", PRETRAIN + ["--train.batch_size=0"], "--train.batch_size=0"),
    Case("batch-schedule-not-from-0", PRETRAIN + ["--train.batch_schedule=[[5, 8]]"], "train.batch_schedule"),
    Case("seq-len-0", PRETRAIN + ["--data.seq_len=0"], "--data.seq_len=0"),
    Case("seed-negative", PRETRAIN + ["--train.seed=-1"], "--train.seed=-1"),
    Case("precision-fp16", PRETRAIN + ["--train.precision=fp16"], "--train.precision=fp16"),
    Case("sample-temperature-nan", PRETRAIN + ["--finish.sample_temperature=.nan"],
         "--finish.sample_temperature=.nan"),
    Case("unknown-key", PRETRAIN + ["--train.lrr=0.1"], "unknown key train.lrr (did you mean 'lr'?)"),
    Case("override-no-such-stage", PRETRAIN + ["--stages.9.steps=1"], "--stages.9.steps=1"),
    # refused or warned silently before (item 9)
    Case("grad-clip-negative", PRETRAIN + ["--train.grad_clip=-1"], "--train.grad_clip=-1"),
    Case("weight-decay-negative", PRETRAIN + ["--train.weight_decay=-0.1"], "--train.weight_decay=-0.1"),
    Case("checkpoint-keep-negative", PRETRAIN + ["--checkpoint.keep=-1"], "--checkpoint.keep=-1"),
    Case("eps-0", PRETRAIN + ["--train.eps=0"], "--train.eps=0"),
    Case("seq-len-past-context", PRETRAIN + ["--data.seq_len=128"], "data.seq_len=128"),
    Case("micro-batch-beyond-memory", PRETRAIN + ["--train.batch_size=1000000", "--train.micro_batch_size=1000000"],
         "train.micro_batch_size=1000000: one micro-batch step needs"),
    Case("micro-batch-does-not-split", PRETRAIN + ["--train.micro_batch_size=3"], "train.batch_size"),
    Case("device-banana", PRETRAIN + ["--train.device=banana"], "train.device=banana"),
    Case("init-from-missing", PRETRAIN + ["--init-from", "{tmp}/nope"], "{tmp}/nope"),
    Case("init-from-not-a-checkpoint", PRETRAIN + ["--init-from", "{ws}/model"], "{ws}/model"),
    Case("input-missing", ["pretrain", "{tmp}/run.yaml", "--out", "{tmp}/out"], "{tmp}/gone.jsonl",
         setup=config_with("[math.jsonl]", "[{tmp}/gone.jsonl]")),
    Case("resume-other-batch", RESUME + ["--train.batch_size=16"], "train.batch_size=16", setup=copy_of_run()),
    Case("resume-other-seed", RESUME + ["--train.seed=7"], "train.seed=7", setup=copy_of_run()),
    Case("resume-other-seq-len", RESUME + ["--data.seq_len=16"], "data.seq_len=16", setup=copy_of_run()),
    # config files
    Case("yaml-invalid-utf8", ["pretrain", "{tmp}/run.yaml"], "{tmp}/run.yaml:2",
         setup=write("run.yaml", b"train:\n  lr: 0.1  # caf\xe9\n")),
    Case("yaml-duplicate-section", ["pretrain", "{tmp}/run.yaml"], "{tmp}/run.yaml:3: duplicate key train",
         setup=write("run.yaml", "train: {{lr: 0.1}}\ndata: {{seq_len: 32}}\ntrain: {{steps: 5}}\n")),
    Case("yaml-duplicate-key", ["pretrain", "{tmp}/run.yaml"], "{tmp}/run.yaml:3: duplicate key train.lr",
         setup=write("run.yaml", "train:\n  lr: 0.1\n  lr: 0.2\n")),
    Case("yaml-alias-bomb", ["pretrain", "{tmp}/run.yaml"], "{tmp}/run.yaml:2", setup=write("run.yaml", alias_bomb())),
    Case("yaml-syntax", ["pretrain", "{tmp}/run.yaml"], "{tmp}/run.yaml", setup=write("run.yaml", "train: [1, 2\n")),
    Case("yaml-a-list", ["pretrain", "{tmp}/run.yaml"], "{tmp}/run.yaml", setup=write("run.yaml", "- 1\n- 2\n")),
    Case("yaml-value-in-file", ["pretrain", "{tmp}/run.yaml"], "{tmp}/run.yaml:2: train.eps",
         setup=write("run.yaml", "train:\n  eps: 0\n")),
    Case("config-not-found", ["pretrain", "{tmp}/nope.yaml"], "{tmp}/nope.yaml"),
    Case("fragment-unknown-key", PRETRAIN + ["--set-from", "{tmp}/frag.yaml"], "unknown key train.lrr",
         setup=write("frag.yaml", "train: {{lrr: 0.1}}\n")),
    # tokenizer
    Case("tokenizer-vocab-huge", ["tokenizer", "train", "--input", "{ws}/wiki.jsonl", "--out", "{tmp}/t",
                                  "--vocab-size", "99999999999"], "--vocab-size"),
    Case("tokenizer-vocab-tiny", ["tokenizer", "train", "--input", "{ws}/wiki.jsonl", "--out", "{tmp}/t",
                                  "--vocab-size", "10"], "--vocab-size"),
    Case("tokenizer-input-missing", ["tokenizer", "train", "--input", "{tmp}/none.txt", "--out", "{tmp}/t",
                                     "--vocab-size", "1000"], "{tmp}/none.txt"),
    Case("encode-invalid-utf8-text", ["tokenizer", "encode", "--tokenizer", "{ws}/tok", INVALID_UTF8], "TEXT"),
    Case("encode-invalid-utf8-stdin", ["tokenizer", "encode", "--tokenizer", "{ws}/tok", "-"], "stdin",
         stdin=b"caf\xe9\n"),
    Case("encode-tokenizer-missing", ["tokenizer", "encode", "--tokenizer", "{tmp}/nope", "x"], "{tmp}/nope"),
    Case("decode-id-out-of-range", ["tokenizer", "decode", "--tokenizer", "{ws}/tok", "99999"], "99999"),
    # generation
    Case("generate-temperature-nan", GEN + ["--temperature", "nan"], "--temperature"),
    Case("generate-max-new-tokens-1e11", GEN + ["--max-new-tokens", "1e11"], "--max-new-tokens"),
    Case("generate-past-context", GEN + ["--max-new-tokens", "100000000000"], "--max-new-tokens"),
    Case("generate-long-prompt-past-context", ["generate", MODEL, "--prompt", "word " * 80, "--max-new-tokens", "4"],
         "--prompt"),
    Case("generate-device-banana", GEN + ["--device", "banana"], "--device=banana"),
    Case("generate-top-p", GEN + ["--top-p", "1.5"], "--top-p"),
    Case("generate-top-k-0", GEN + ["--top-k", "0"], "--top-k"),
    Case("generate-invalid-utf8-prompt", ["generate", MODEL, "--prompt", INVALID_UTF8], "--prompt"),
    Case("generate-model-missing", ["generate", "{tmp}/nope", "--prompt", "x"], "{tmp}/nope"),
    Case("chat-invalid-utf8-stdin", ["chat", MODEL, "--max-new-tokens", "4"], "stdin line 1", stdin=b"caf\xe9\n"),
    Case("chat-past-context", ["chat", MODEL, "--max-new-tokens", "1000"], "--max-new-tokens", stdin=b"hi\n"),
    # model folders (others validate config.json and the weights index)
    Case("config-json-a-list", ["generate", "{tmp}/model", "--prompt", "x"], "{tmp}/model",
         setup=copy_of_model(set_config_json(lambda c: [c]))),
    Case("config-json-negative-layers", ["generate", "{tmp}/model", "--prompt", "x"], "num_hidden_layers",
         setup=copy_of_model(set_config_json(lambda c: {**c, "num_hidden_layers": -1}))),
    Case("safetensors-index-a-list", ["generate", "{tmp}/model", "--prompt", "x"], "model.safetensors.index.json",
         setup=copy_of_model(index_that_is_a_list)),
    Case("import-gguf-cut-in-header", ["import", "{tmp}/cut.gguf", "--out", "{tmp}/imported"], "{tmp}/cut.gguf",
         setup=gguf_cut_in_header),
    Case("import-over-a-checkpoint", ["import", MODEL, "--out", "{tmp}/ckpt"], "{tmp}/ckpt",
         setup=lambda ws, tmp: shutil.copytree(sorted((ws / "run" / "checkpoints").glob("step-*"))[-1], tmp / "ckpt")),
    Case("resume-empty-optimizer", RESUME, "optimizer.pt", setup=copy_of_run(empty_optimizer),
         may_touch=(".xmodel2", ".lock", "run.lock")),
    # eval task files
    Case("eval-task-invalid-utf8", ["eval", MODEL, "--tasks", "{tmp}/quiz.jsonl"], "{tmp}/quiz.jsonl:2",
         setup=write("quiz.jsonl", b'{"query": "Q:", "choices": ["a", "b"], "gold": 0}\n{"query": "caf\xe9"}\n')),
    Case("eval-task-truncated-gz", ["eval", MODEL, "--tasks", "{tmp}/quiz.jsonl.gz"], "{tmp}/quiz.jsonl.gz",
         setup=truncated_gzip),
    # output paths
    Case("pretrain-out-is-a-file", PRETRAIN, "{tmp}/out", setup=write("out", "not a folder")),
    Case("prepare-out-is-a-file", ["prepare", "{ws}/wiki.jsonl", "--tokenizer", "{ws}/tok", "--out", "{tmp}/out"],
         "{tmp}/out", setup=write("out", "not a folder")),
    Case("prepare-strict-invalid-utf8", ["prepare", "{tmp}/bad.jsonl", "--tokenizer", "{ws}/tok", "--out",
                                         "{tmp}/shards", "--strict"], "{tmp}/bad.jsonl",
         setup=write("bad.jsonl", b'{"text": "caf\xe9"}\n')),
    Case("pretrain-read-only", ["pretrain", CFG, "--out", "{tmp}/mnt/out", "--no-progress"], "{tmp}/mnt/out",
         mount="ro"),
    Case("pretrain-disk-full", ["pretrain", CFG, "--out", "{tmp}/mnt/out", "--no-progress"], "{tmp}/mnt/out",
         mount="full"),
    Case("prepare-read-only", ["prepare", "{ws}/wiki.jsonl", "--tokenizer", "{ws}/tok", "--out", "{tmp}/mnt/s"],
         "{tmp}/mnt/s", mount="ro"),
    Case("prepare-disk-full", ["prepare", "{ws}/wiki.jsonl", "--tokenizer", "{ws}/tok", "--out", "{tmp}/mnt/s"],
         "{tmp}/mnt/s", mount="full"),
    Case("import-read-only", ["import", MODEL, "--out", "{tmp}/mnt/m"], "{tmp}/mnt/m", mount="ro"),
    Case("import-disk-full", ["import", MODEL, "--out", "{tmp}/mnt/m"], "{tmp}/mnt/m", mount="full"),
    Case("dedup-read-only", ["dedup", "{ws}/wiki.jsonl", "--out", "{tmp}/mnt/d.jsonl"], "{tmp}/mnt/d", mount="ro"),
    Case("dedup-disk-full", ["dedup", "{ws}/wiki.jsonl", "--out", "{tmp}/mnt/d.jsonl"], "{tmp}/mnt/d", mount="full"),
    Case("eval-output-read-only", ["eval", MODEL, "--tasks", "{ws}/quiz.jsonl", "--output", "{tmp}/mnt/r.json"],
         "{tmp}/mnt/r.json", mount="ro"),
    Case("eval-output-disk-full", ["eval", MODEL, "--tasks", "{ws}/quiz.jsonl", "--output", "{tmp}/mnt/r.json"],
         "{tmp}/mnt/r.json", mount="full"),
    # usage
    Case("unknown-command", ["nosuchcommand"], "nosuchcommand"),
    Case("unknown-option", ["generate", MODEL, "--prompt", "x", "--bogus"], "--bogus"),
]


def test_the_table_holds_at_least_60_distinct_cases():
    assert len(CASES) >= 60
    assert len({case.id for case in CASES}) == len(CASES)


# ---- running a row -------------------------------------------------------------------------------

def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root`: (size, mtime in ns); every folder: present. (A folder's own
    mtime records a temporary file that came and went, which is no harm.)"""
    found = {}
    for path in root.rglob("*"):
        info = path.lstat()
        found[str(path.relative_to(root))] = (0, 0) if path.is_dir() else (info.st_size, info.st_mtime_ns)
    return found


def changes(before: dict, after: dict, may_touch: tuple[str, ...] = ()) -> list[str]:
    names = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
    return sorted(n for n in names if Path(n).name not in may_touch)


def run_in_process(argv: list[str], stdin: bytes | None, monkeypatch, capsys) -> tuple[int, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own exit
        code = exc.code
    return code, capsys.readouterr().err


def mount_works() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=16k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


def run_on_tmpfs(argv: list[str], mount: str, tmp: Path) -> tuple[int, str]:
    """`xmodel2 ARGV` in a private mount namespace where TMP/mnt is a read-only tmpfs ("ro") or
    a tmpfs whose space is used up ("full")."""
    mnt = tmp / "mnt"
    prepare = f"mount -t tmpfs -o size=256k tmpfs {mnt}"
    if mount == "ro":
        prepare += f" && mount -o remount,ro {mnt}"
    else:
        prepare += f" && (dd if=/dev/zero of={mnt}/filler bs=4k 2>/dev/null; true)"
    command = " ".join(["exec", sys.executable, "-m", "xmodel2", *(_quote(a) for a in argv)])
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           f"{prepare} && {command}"], capture_output=True, text=True, cwd=tmp, timeout=300)
    return proc.returncode, proc.stderr


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_and_exit_2_and_changes_nothing(case, ws, tmp_path, monkeypatch, capsys):
    if case.mount and not mount_works():
        pytest.skip("needs root and `unshare --mount` to mount a tmpfs")
    fill = lambda text: text.format(ws=ws, tmp=tmp_path)  # noqa: E731
    if case.setup is not None:
        case.setup(ws, tmp_path)
    if case.mount:
        (tmp_path / "mnt").mkdir()
    monkeypatch.chdir(tmp_path)
    shared, own = snapshot(ws), snapshot(tmp_path)
    argv = [fill(a) for a in case.argv]
    if case.mount:
        code, err = run_on_tmpfs(argv, case.mount, tmp_path)
    else:
        code, err = run_in_process(argv, case.stdin, monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("xmodel2: error: ") and fill(case.names) in lines[0], lines[0]
    assert changes(shared, snapshot(ws)) == []
    assert changes(own, snapshot(tmp_path), case.may_touch) == []
