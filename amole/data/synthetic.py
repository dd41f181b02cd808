"""Tiny deterministic tasks (string mappings over random words) so tests and smoke runs need no files.

Each task is a different, trivially learnable mapping, so clients are genuinely heterogeneous: a router that
separates them, or experts that specialise, show up even with a toy model.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable

from amole.data.example import Example
from amole.data.prompt import DEFAULT_TEMPLATE, PromptFormat

_GENERATIVE: dict[str, tuple[str, Callable[[str], str]]] = {
    "reverse": ("Reverse the letters of the word.", lambda w: w[::-1]),
    "upper": ("Write the word in upper case.", str.upper),
    "copy": ("Repeat the word.", lambda w: w),
    "sort": ("Sort the letters of the word alphabetically.", lambda w: "".join(sorted(w))),
}
_CHOICE: dict[str, tuple[str, Callable[[str], str], tuple[str, ...] | None]] = {
    "first_letter": ("Which letter does the word start with?", lambda w: w[0], None),
    "vowel_parity": (
        "Is the number of vowels in the word even or odd?",
        lambda w: "odd" if sum(c in "aeiou" for c in w) % 2 else "even",
        ("even", "odd"),
    ),
}
SYNTHETIC_TASKS: tuple[str, ...] = (*_GENERATIVE, *_CHOICE)


def _word(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 6)))


def synthetic_task(task: str, n: int = 200, seed: int = 0, template: str = DEFAULT_TEMPLATE) -> list[Example]:
    """``n`` examples of one synthetic task; the same (task, n, seed) always gives the same list."""
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; available: {list(SYNTHETIC_TASKS)}")
    rng = random.Random(f"{task}:{seed}")
    out: list[Example] = []
    for _ in range(n):
        word = _word(rng)
        if task in _GENERATIVE:
            instruction, fn = _GENERATIVE[task]
            fmt = PromptFormat(template, task_prefix=instruction + "\n", input_prefix="Word: ")
            out.append(Example(fmt.render(word), fn(word)))
            continue
        instruction, fn, fixed = _CHOICE[task]
        answer = fn(word)
        if fixed is not None:
            choices = list(fixed)
        else:  # three distractor letters not equal to the answer, in random order
            choices = [answer, *rng.sample([c for c in string.ascii_lowercase if c != answer], 3)]
            rng.shuffle(choices)
        fmt = PromptFormat(template, task_prefix=instruction + "\n", input_prefix="Word: ")
        out.append(Example(fmt.render(word, choices), answer, tuple(choices), choices.index(answer)))
    return out


def synthetic_source(n: int = 200, seed: int = 0) -> Callable[[str], list[Example]]:
    """A task source for :func:`amole.data.task_per_client` that generates instead of reading files."""
    return lambda task: synthetic_task(task, n=n, seed=seed)
