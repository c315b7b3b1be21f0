"""What a task is: its documents, how they are scored, and where they came from."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ChoiceDoc:
    """One multiple-choice question as (context, continuation) pairs, one pair per choice.

    Most tasks share the context and vary the continuation. Partial scoring (Winogrande) varies
    the context and scores the same continuation. `norm_chars` are the character counts that
    `acc_norm` divides by: the harness uses the choice text without the target delimiter.
    """

    contexts: list[str]
    continuations: list[str]
    gold: int
    norm_chars: list[int]
    doc_id: str = ""

    def __post_init__(self) -> None:
        if not (len(self.contexts) == len(self.continuations) == len(self.norm_chars)):
            raise ValueError("contexts, continuations and norm_chars must have one entry per choice")
        if not 0 <= self.gold < len(self.contexts):
            raise ValueError(f"gold index {self.gold} out of range for {len(self.contexts)} choices")


@dataclass
class GenerationDoc:
    """A prompt answered by greedy generation; `answer` is the gold final answer."""

    prompt: str
    answer: str
    doc_id: str = ""


@dataclass
class AnswerRule:
    """How to read a final answer out of generated text and compare it with the gold answer.

    `strict` is a regex whose first group is the answer; the flexible rule takes the last match of
    `flexible` (any group that matched). Both answers then lose every match of `ignore` (and case,
    when `ignore_case`) before the exact-match comparison, as the harness's exact_match does.
    """

    strict: str
    flexible: str = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
    ignore: tuple[str, ...] = ()
    ignore_case: bool = True
    normalizer: str = "plain"  # "plain" or "math" (LaTeX final answers)


@dataclass
class Task:
    name: str
    kind: str  # "multiple_choice" or "generate"
    docs: list
    shots: int
    source: str  # where the documents came from (a file path or package and version)
    partial: bool = False  # Winogrande-style partial scoring: report acc only
    stop: list[str] = field(default_factory=list)
    max_new_tokens: int = 256
    answer_rule: AnswerRule | None = None

    def limited(self, limit: int | None) -> "Task":
        if limit is None or limit >= len(self.docs):
            return self
        return Task(self.name, self.kind, self.docs[:limit], self.shots, self.source, self.partial,
                    self.stop, self.max_new_tokens, self.answer_rule)
