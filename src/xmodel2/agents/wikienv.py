"""ReAct's Wikipedia environment, answered from a local `DocStore` instead of the live site.

Actions and observations follow ReAct's `wikienv.py` and the strings its few-shot prompts show:
  search[entity]   the page's first five sentences on an exact or case-insensitive title match,
                   else "Could not find [entity]. Similar: ['T1', ...]." (top BM25 titles)
  lookup[keyword]  "(Result k / N) sentence": the next sentence of the current page that contains
                   the keyword (case-insensitive); "No more results." when they run out
  finish[answer]   ends the episode: "Episode finished, reward = R" (R from the task's reward)
  think[thought]   "Nice thought."
Anything else is answered "Invalid action: ..." and counted in `info["invalid_actions"]`.
Action names may be written in any case, as the prompts write them ("Search[...]").
"""

from __future__ import annotations

from typing import Callable

from xmodel2.agents.actions import parse_action
from xmodel2.agents.docstore import DocStore, sentences
from xmodel2.agents.env import Environment, Step

PAGE_SENTENCES = 5
SUGGESTIONS = 5

Reward = Callable[[str, str], float]  # (prediction, gold answer) -> reward


class WikiEnv(Environment):
    def __init__(self, store: DocStore, prefix: str = "Question", reward: Reward | None = None) -> None:
        self.store = store
        self.prefix = prefix
        self.reward = reward
        self.gold: str | None = None
        self.reset("")

    def reset(self, task: str, gold: str | None = None) -> str:
        """Start on a question (or claim); `gold` is only used for the reward at `finish`."""
        self.gold = gold
        self.page: str | None = None
        self.lookup_keyword: str | None = None
        self.lookup_hits: list[str] = []
        self.lookup_next = 0
        self.answer: str | None = None
        self.steps = 0
        self.invalid_actions = 0
        self.last_reward = 0.0
        self.observation = f"{self.prefix}: {task}"
        return self.observation

    def info(self) -> dict:
        return {"steps": self.steps, "answer": self.answer, "invalid_actions": self.invalid_actions}

    def step(self, action: str) -> Step:
        if self.answer is not None:
            return Step(self.observation, self.last_reward, True, self.info())
        self.steps += 1
        parsed = parse_action(action)
        if parsed is None:
            self.invalid_actions += 1
            self.observation = f"Invalid action: {action.strip()}"
        elif parsed.name == "search":
            self.observation = self._search(parsed.argument)
        elif parsed.name == "lookup":
            self.observation = self._lookup(parsed.argument)
        elif parsed.name == "think":
            self.observation = "Nice thought."
        else:
            self.answer = parsed.argument
            if self.reward is not None and self.gold is not None:
                self.last_reward = float(self.reward(self.answer, self.gold))
            self.observation = f"Episode finished, reward = {self.last_reward:g}"
            return Step(self.observation, self.last_reward, True, self.info())
        return Step(self.observation, 0.0, False, self.info())

    def _search(self, entity: str) -> str:
        title = self.store.find(entity)
        if title is None:
            return f"Could not find [{entity}]. Similar: {self.store.similar(entity, SUGGESTIONS)}."
        self.page = self.store.pages[title]
        self.lookup_keyword, self.lookup_hits, self.lookup_next = None, [], 0
        return " ".join(sentences(self.page)[:PAGE_SENTENCES])

    def _lookup(self, keyword: str) -> str:
        if keyword != self.lookup_keyword:  # a new keyword starts from the page's first hit
            self.lookup_keyword = keyword
            needle = keyword.casefold()
            self.lookup_hits = [s for s in sentences(self.page or "") if needle in s.casefold()]
            self.lookup_next = 0
        if self.lookup_next >= len(self.lookup_hits):
            return "No more results."
        self.lookup_next += 1
        return f"(Result {self.lookup_next} / {len(self.lookup_hits)}) {self.lookup_hits[self.lookup_next - 1]}"
