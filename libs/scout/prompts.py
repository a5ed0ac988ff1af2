"""Prompt templates per task, and exactly where the context, question and answer cue lie in the token sequence.

Selection (Q2C and friends) scores *context* positions by attention from *question-side* rows, and Scout mode
sends context positions from one model to another, so both need exact token spans. Tokenizing a whole prompt
string and mapping character offsets back is not exact: byte-level BPE merges punctuation with the newline that
follows it ('.\\n' is one token for Qwen2 and SmolLM2), so a token can straddle the context/template boundary.
Instead each piece is tokenized on its own and the ids are concatenated: the spans are exact by construction,
and the same text always yields the same ids on both ends (the cloud rebuilds the prompt from the document
reference and must get the positions the edge meant).

Plain prompts (`Context: …\\nQuestion: …\\nAnswer:`), not chat templates: both Qwen models are Coder-Instruct
variants and answer short extractive questions well this way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TASKS = ("extractive_qa", "multihop_qa", "multiple_choice", "open_qa")

# Each template is a list of (role, text) pieces; {context} and {question} are filled in; roles name the spans.
_TEMPLATES: dict[str, list[tuple[str, str]]] = {
    # SQuAD v2, TriviaQA: answer with a span of the context.
    "extractive_qa": [
        ("prefix", "Context:"),
        ("context", " {context}"),
        ("sep", "\nQuestion:"),
        ("question", " {question}"),
        ("cue", "\nAnswer:"),
    ],
    # HotpotQA: several paragraphs; the answer needs two of them.
    "multihop_qa": [
        ("prefix", "Answer the question from the paragraphs below with a short phrase.\n\nParagraphs:"),
        ("context", " {context}"),
        ("sep", "\n\nQuestion:"),
        ("question", " {question}"),
        ("cue", "\nAnswer:"),
    ],
    # MMLU: the "context" is the question stem with its choices (what selection may prune); the cue asks for a letter.
    "multiple_choice": [
        (
            "prefix",
            "The following is a multiple choice question. Reply with the letter of the correct answer.\n\n",
        ),
        ("context", "{context}"),
        ("question", "{question}"),
        ("cue", "\nAnswer:"),
    ],
    # No document: the question alone (the `local`/closed-book baseline).
    "open_qa": [("question", "Question: {question}"), ("cue", "\nAnswer:")],
}

DATASET_TASK = {
    "squad_v2": "extractive_qa",
    "triviaqa": "extractive_qa",
    "triviaqa_longbench": "extractive_qa",
    "hotpotqa": "multihop_qa",
    "mmlu": "multiple_choice",
    "mmlu_dev": "multiple_choice",
}

CHOICE_LETTERS = "ABCD"


@dataclass(frozen=True)
class Span:
    """Half-open token range [start, end)."""

    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start

    def indices(self) -> range:
        return range(self.start, self.end)


@dataclass
class Prompt:
    """Token ids of a prompt and the exact spans of each piece.

    `context_offsets[i]` is the character (start, end) of context token i *within the context string*, which is
    what cross-tokenizer alignment of position sets works from.
    """

    task: str
    text: str
    input_ids: list[int]
    spans: dict[str, Span]
    context_offsets: list[tuple[int, int]] = field(default_factory=list)

    @property
    def context(self) -> Span:
        return self.spans.get("context", Span(0, 0))

    @property
    def question(self) -> Span:
        return self.spans.get("question", Span(0, 0))

    @property
    def cue(self) -> Span:
        return self.spans["cue"]

    @property
    def query_side(self) -> Span:
        """Rows that ask: everything after the context (question, separators and the answer cue), as in the study."""
        return Span(self.context.end, len(self.input_ids))

    def __len__(self) -> int:
        return len(self.input_ids)


def format_choices(question: str, choices: list[str]) -> str:
    """MMLU stem and its lettered choices as one block of text."""
    lines = [question.strip()] + [f"{CHOICE_LETTERS[i]}. {c}" for i, c in enumerate(choices)]
    return "\n".join(lines)


def _encode_piece(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    if not text:
        return [], []
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _bos(tokenizer: Any) -> list[int]:
    """The BOS id if this tokenizer adds one by default (Llama-style), else nothing (Qwen2, SmolLM2)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [bos] if ids and ids[0] == bos else []


def build_prompt(
    tokenizer: Any,
    *,
    question: str,
    context: str = "",
    task: str = "extractive_qa",
    choices: list[str] | None = None,
) -> Prompt:
    """Build the prompt for `task` and return its ids with exact context/question/cue spans."""
    if task not in _TEMPLATES:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    if task == "multiple_choice":
        if not choices:
            raise ValueError("multiple_choice needs choices")
        context, question = format_choices(question, choices), ""
    ids: list[int] = _bos(tokenizer)
    text_parts: list[str] = []
    spans: dict[str, Span] = {}
    context_offsets: list[tuple[int, int]] = []
    for role, template in _TEMPLATES[task]:
        piece = template.format(context=context, question=question)
        if role == "context" and not context:
            continue
        if role == "question" and not question:
            continue
        piece_ids, offsets = _encode_piece(tokenizer, piece)
        if role == "context":
            lead = len(piece) - len(context)  # the leading space belongs to the template, not the document
            context_offsets = [(max(s - lead, 0), max(e - lead, 0)) for s, e in offsets]
        spans[role] = Span(len(ids), len(ids) + len(piece_ids))
        ids.extend(piece_ids)
        text_parts.append(piece)
    return Prompt(task=task, text="".join(text_parts), input_ids=ids, spans=spans, context_offsets=context_offsets)


def prompt_for_example(tokenizer: Any, example: Any) -> Prompt:
    """Prompt for a dataset example (anything with dataset/context/question/choices attributes or keys)."""
    get = example.get if isinstance(example, dict) else lambda k, d=None: getattr(example, k, d)
    dataset = get("dataset", "squad_v2")
    task = DATASET_TASK.get(dataset, "extractive_qa")
    return build_prompt(
        tokenizer,
        question=get("question", ""),
        context=get("context", "") or "",
        task=task,
        choices=get("choices"),
    )
