"""The environment interface an agent talks to, in the shape of OpenAI Gym's text environments.

`reset(task)` starts an episode and returns the first observation (the question or claim);
`step(action)` takes one action string and returns `Step(observation, reward, done, info)`,
which unpacks like Gym's 4-tuple. The Wikipedia tasks implement it (`wikienv.WikiEnv`); an
AlfWorld or WebShop adapter would wrap those simulators behind the same two methods, so the
ReAct loop (`react.run_episode`) drives any of them unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, NamedTuple


class Step(NamedTuple):
    observation: str
    reward: float
    done: bool
    info: dict[str, Any]


class Environment(ABC):
    @abstractmethod
    def reset(self, task: str) -> str:
        """Start an episode on `task` (a question, a claim, a goal); return the first observation."""

    @abstractmethod
    def step(self, action: str) -> Step:
        """Apply one action, e.g. `search[Paris]`; after `done`, further steps change nothing."""
