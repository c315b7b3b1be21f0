"""The ReAct loop: few-shot prompt, then Thought / Action / Observation turns until finish.

Turn i asks the model to continue `prompt + "Thought i:"`, stopping at the next "\\nObservation".
The text splits at "\\nAction i:" into the thought and the action (the action's first line).
When the model wrote no action line, the turn counts as a format error and, as in ReAct, the
model is asked again for the action alone after the first line of its thought. The environment
answers the action (an unparseable one with "Invalid action: ..."), and the observation joins
the prompt. An episode that has not finished after `max_steps` turns, or whose prompt outgrows
the model's context, ends with `finish[]` (an empty answer).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from xmodel2.agents.env import Environment
from xmodel2.agents.llm import Completer, ContextFull

MAX_STEPS = 7


@dataclass
class Turn:
    thought: str
    action: str
    observation: str


@dataclass
class Trajectory:
    question: str  # the first observation: "Question: ..." or "Claim: ..."
    turns: list[Turn] = field(default_factory=list)
    answer: str = ""
    reward: float = 0.0
    format_errors: int = 0  # turns whose text had no "Action i:" line
    invalid_actions: int = 0  # actions the environment could not parse
    step_limit: bool = False  # ended by the step limit, not by the model's finish
    context_full: bool = False  # ended because the prompt no longer fit the model's context

    def to_dict(self) -> dict:
        return asdict(self)


def split_turn(text: str, step: int) -> tuple[str, str] | None:
    """(thought, action) from the model's continuation of "Thought {step}:", or None without an action line."""
    thought, marker, rest = text.partition(f"\nAction {step}:")
    if not marker:
        return None
    return thought.strip(), first_line(rest)


def first_line(text: str) -> str:
    lines = text.strip().split("\n")
    return lines[0].strip()


def run_episode(completer: Completer, env: Environment, prompt: str, task: str,
                max_steps: int = MAX_STEPS, **reset_options) -> Trajectory:
    """One episode of `task` (a question or claim); `reset_options` go to `env.reset` (e.g. gold=...)."""
    first = env.reset(task, **reset_options)
    trajectory = Trajectory(first)
    prompt = f"{prompt}{first}\n"
    done, info = False, {}
    try:
        for i in range(1, max_steps + 1):
            text = completer.complete(f"{prompt}Thought {i}:", stop=["\nObservation"])
            parts = split_turn(text, i)
            if parts is None:
                trajectory.format_errors += 1
                thought = first_line(text)
                action = first_line(completer.complete(f"{prompt}Thought {i}: {thought}\nAction {i}:", stop=["\n"]))
            else:
                thought, action = parts
            observation, reward, done, info = env.step(action)
            observation = " ".join(observation.split("\n")).strip()
            trajectory.turns.append(Turn(thought, action, observation))
            prompt += f"Thought {i}: {thought}\nAction {i}: {action}\nObservation {i}: {observation}\n"
            if done:
                break
        else:
            trajectory.step_limit = True
    except ContextFull:
        trajectory.context_full = True
    if not done:
        _, reward, done, info = env.step("finish[]")
    trajectory.answer = info.get("answer") or ""
    trajectory.reward = float(reward)
    trajectory.invalid_actions = int(info.get("invalid_actions", 0))
    return trajectory
