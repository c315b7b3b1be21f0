"""Agents, without a model: the offline Wikipedia environment on a real slice of the bundled
Wikipedia paragraphs (hand-written action sequences), the action parser, the HotpotQA / FEVER
metrics, and ReAct's own data files (skipped when ../shared/reference/react is absent)."""

import ast
import json
import re
from pathlib import Path

import pytest

from agent_fixtures import store_file  # noqa: F401  (module fixture)
from xmodel2.agents.actions import Action, parse_action
from xmodel2.agents.docstore import DocStore, load_docstore, sentences
from xmodel2.agents.metrics import exact_match, f1, fever_correct, fever_label, normalize_answer
from xmodel2.agents.reactdata import load_items, load_prompt
from xmodel2.agents.tasks import sample
from xmodel2.agents.wikienv import WikiEnv
from xmodel2.errors import UserError

REACT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "react"
needs_react = pytest.mark.skipif(not REACT_DIR.is_dir(), reason=f"ReAct reference data not found at {REACT_DIR}")


@pytest.fixture(scope="module")
def store(store_file) -> DocStore:
    return load_docstore([store_file])


@pytest.fixture
def env(store) -> WikiEnv:
    return WikiEnv(store, prefix="Question", reward=exact_match)


def test_store_reads_the_slice(store):
    assert len(store) == 150
    assert store.description.startswith("offline Wikipedia: ") and "150 pages" in store.description
    assert store.find("Ada Lovelace") == "Ada Lovelace"
    assert store.find("ada LOVELACE") == "Ada Lovelace"
    assert store.find("Charles Babbage") is None


def test_search_exact_hit_returns_first_five_sentences(env, store):
    assert env.reset("Who was Ada Lovelace?", gold="mathematician") == "Question: Who was Ada Lovelace?"
    observation, reward, done, info = env.step("Search[Ada Lovelace]")
    assert observation.startswith("Augusta Ada King, Countess of Lovelace, also known as Ada Lovelace, was an English")
    assert observation.endswith("Lovelace is often considered the first computer programmer.")
    assert (reward, done, info["steps"]) == (0.0, False, 1)
    long_page = next(t for t in store.titles if len(sentences(store.pages[t])) > 5)
    observation = env.step(f"search[{long_page}]").observation
    parts = sentences(store.pages[long_page])
    assert observation == " ".join(parts[:5]) and parts[5] not in observation


def test_search_case_insensitive_hit(env):
    env.reset("q")
    exact = env.step("Search[Abraham Lincoln]").observation
    assert env.step("search[abraham LINCOLN]").observation == exact
    assert exact.startswith("Abraham Lincoln was the 16th president of the United States")


def test_search_miss_suggests_titles_by_bm25(env):
    env.reset("q")
    observation = env.step("Search[Charles Babbage]").observation
    match = re.fullmatch(r"Could not find \[Charles Babbage\]\. Similar: (\[.*\])\.", observation)
    assert match, observation
    similar = ast.literal_eval(match.group(1))
    assert similar[0] == "Ada Lovelace" and len(similar) <= 5  # the only page of the slice naming Babbage
    observation = env.step("Search[Zzyzx Qwvbn]").observation
    assert observation == "Could not find [Zzyzx Qwvbn]. Similar: []."


def test_lookup_steps_through_matching_sentences(env):
    env.reset("q")
    assert env.step("Lookup[first]").observation == "No more results."  # no page yet
    env.step("Search[Ada Lovelace]")
    first = "(Result 1 / 2) She was the first to recognise the machine had applications beyond pure calculation."
    assert env.step("Lookup[first]").observation == first
    assert env.step("lookup[first]").observation == "(Result 2 / 2) Lovelace is often considered the first computer programmer."
    assert env.step("lookup[first]").observation == "No more results."
    assert env.step("lookup[FIRST]").observation == first  # a new keyword starts again, ignoring case
    assert env.step("lookup[Babbage]").observation.startswith("(Result 1 / 1) Augusta Ada King")
    env.step("Search[Abraham Lincoln]")  # a new page resets the lookup
    assert env.step("lookup[Babbage]").observation == "No more results."


def test_finish_ends_the_episode_with_reward(env):
    env.reset("Who was the 16th US president?", gold="Abraham Lincoln")
    env.step("Search[Abraham Lincoln]")
    observation, reward, done, info = env.step("Finish[abraham lincoln]")
    assert (observation, reward, done) == ("Episode finished, reward = 1", 1.0, True)
    assert info == {"steps": 2, "answer": "abraham lincoln", "invalid_actions": 0}
    assert env.step("Search[Ada Lovelace]") == (observation, 1.0, True, info)  # nothing changes after done
    env.reset("again", gold="Abraham Lincoln")
    assert env.step("finish[Lincoln]")[:3] == ("Episode finished, reward = 0", 0.0, True)


def test_invalid_and_think_actions(env):
    env.reset("q")
    assert env.step("Search Ada Lovelace").observation == "Invalid action: Search Ada Lovelace"
    assert env.step("Browse[x]").observation == "Invalid action: Browse[x]"
    assert env.step("search[]").observation == "Invalid action: search[]"
    assert env.step("Think[I should search]").observation == "Nice thought."
    assert env.step("").info["invalid_actions"] == 4


def test_parse_action():
    assert parse_action("Search[Colorado orogeny]") == Action("search", "Colorado orogeny")
    assert parse_action("  lookup[eastern sector] ") == Action("lookup", "eastern sector")
    assert parse_action("Finish[1,800 to 7,000 ft]") == Action("finish", "1,800 to 7,000 ft")
    assert parse_action("finish[]") == Action("finish", "")
    assert parse_action("Search[High Plains (United States)]") == Action("search", "High Plains (United States)")
    assert parse_action("Search[a [b] c]") == Action("search", "a [b] c")
    for bad in ("Search", "Search[x", "Search[x] then", "Jump[x]", "lookup[  ]", "", "Finish[x]\nSearch[y]x"):
        assert parse_action(bad) is None, bad


def test_sentences_keep_abbreviations():
    text = "Milhouse was named after U.S. president Richard Nixon. He rose 1,800 ft. The end!\nNew paragraph? Yes."
    assert sentences(text) == ["Milhouse was named after U.S. president Richard Nixon.", "He rose 1,800 ft.",
                               "The end!", "New paragraph?", "Yes."]


def test_hotpotqa_metrics():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("A cat and an owl") == "cat and owl"
    assert exact_match("the Richard Nixon.", "Richard Nixon") == 1.0
    assert exact_match("Nixon", "Richard Nixon") == 0.0
    assert f1("Nixon", "Richard Nixon") == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert f1("president Richard Nixon", "Richard Nixon") == pytest.approx(2 * (2 / 3) * 1.0 / (2 / 3 + 1))
    assert f1("yes", "no") == 0.0 and f1("yes it is", "yes") == 0.0 and f1("Yes.", "yes") == 1.0
    assert f1("", "Richard Nixon") == 0.0


def test_fever_metrics():
    assert fever_label("SUPPORTS") == "SUPPORTS" and fever_label(" refutes. ") == "REFUTES"
    assert fever_label("Not enough info") == "NOT ENOUGH INFO"
    assert fever_label("NOT ENOUGH INFORMATION") is None and fever_label("") is None
    assert fever_correct("supports", "SUPPORTS") == 1.0 and fever_correct("REFUTES", "SUPPORTS") == 0.0


def test_bad_store_files_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "A", "text": "x"}\n{"title": "B"}\n')
    with pytest.raises(UserError, match=rf"{re.escape(str(bad))}:2: key 'text'"):
        load_docstore([bad])
    bad.write_text('{"title": "A", "text": "x"}\nnot json\n')
    with pytest.raises(UserError, match=rf"{re.escape(str(bad))}:2: invalid JSON"):
        load_docstore([bad])
    with pytest.raises(UserError, match="not found"):
        load_docstore([tmp_path / "missing.jsonl"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .jsonl"):
        load_docstore([tmp_path / "empty"])


def test_store_joins_paragraphs_of_one_title(tmp_path):
    path = tmp_path / "pages.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [{"title": "Kiwi", "text": "A bird. It is small."},
                                                      {"title": "Kiwi", "text": "Kiwis cannot fly."}]))
    store = load_docstore([tmp_path])
    assert store.pages == {"Kiwi": "A bird. It is small.\nKiwis cannot fly."}
    env = WikiEnv(store)
    env.reset("q")
    assert env.step("search[kiwi]").observation == "A bird. It is small. Kiwis cannot fly."


def test_bundled_store_is_all_wiki_splits():
    store = load_docstore()
    assert len(store) == 8999 + 546 + 488
    assert store.description == "offline Wikipedia: bundled lead paragraphs, 10,033 pages"


@needs_react
def test_react_files_load():
    hotpot, fever = load_items(REACT_DIR, "hotpotqa_react"), load_items(REACT_DIR, "fever_react")
    assert len(hotpot) == 7405 and len(fever) == 9999
    assert hotpot[0].text == "Were Scott Derrickson and Ed Wood of the same nationality?" and hotpot[0].answer == "yes"
    assert {item.answer for item in fever} == {"SUPPORTS", "REFUTES", "NOT ENOUGH INFO"}
    prompt = load_prompt(REACT_DIR, "hotpotqa_react")
    assert prompt.startswith("Answer a question by interleaving Thought, Action and Observation steps.")
    assert prompt.count("\nQuestion: ") == 6 and "Action 1: Search[Colorado orogeny]" in prompt
    assert load_prompt(REACT_DIR, "fever_react").count("Claim: ") == 3


@needs_react
def test_sample_follows_react_seed():
    """ReAct's notebooks shuffle range(7405) with random.Random(233); FEVER.ipynb printed these first."""
    hotpot = load_items(REACT_DIR, "hotpotqa_react")
    assert [item.index for item in sample(hotpot, 8)] == [3687, 6238, 5388, 3522, 3824, 2866, 1551, 2544]
    assert len(sample(hotpot, None)) == 500


@needs_react
def test_every_action_in_react_prompts_parses():
    for task in ("hotpotqa_react", "fever_react"):
        actions = re.findall(r"^Action \d+: (.*)$", load_prompt(REACT_DIR, task), flags=re.MULTILINE)
        assert len(actions) >= 8
        assert all(parse_action(a) is not None for a in actions), [a for a in actions if parse_action(a) is None]


def test_missing_react_files(tmp_path):
    with pytest.raises(UserError, match="folder not found"):
        load_prompt(tmp_path / "nope", "hotpotqa_react")
    with pytest.raises(UserError, match="prompts_naive.json: ReAct data file not found"):
        load_prompt(tmp_path, "hotpotqa_react")
    (tmp_path / "fever.json").write_text('{"other": "x"}')
    with pytest.raises(UserError, match="key 'webthink_simple3'"):
        load_prompt(tmp_path, "fever_react")
    (tmp_path / "paper_dev.jsonl").write_text('{"claim": "c", "label": "SUPPORTS"}\n{"claim": "d"}\n')
    with pytest.raises(UserError, match=r"paper_dev.jsonl:2: needs string keys 'claim' and 'label'"):
        load_items(tmp_path, "fever_react")
