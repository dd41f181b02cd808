"""Rouge-L by name: ``rouge_paper`` is the official code's (the ``rouge`` package 1.0.1), ``rouge_score`` ours."""

from __future__ import annotations

import pytest
from rouge import Rouge

from amole.evaluation.rouge_l import metric_name, rouge_l_f

# (reference, generation): case, punctuation, '.'-split sentences, word order, repeats, digits.
PAIRS = [
    ("Yes", "yes"),
    ("Yes", "Yes"),
    ("No", "Maybe"),
    ("The cat sat on the mat.", "the cat sat on the mat"),
    ("The cat sat on the mat. A dog ran away.", "A dog ran away. The cat sat."),
    ("Paris is the capital of France.", "The capital of France is Paris."),
    ("It rains, it pours; the old man snores.", "it rains it pours the old man snores"),
    ("Running runners ran quickly.", "run runner runs quick"),
    ("1, 2 and 3.", "1 2 3"),
    ("Apples. Oranges. Pears.", "Pears, apples and oranges."),
]


def official(reference: str, generation: str) -> float:
    """The official evaluation: ``Rouge().get_scores(hyp, ref)[0]["rouge-l"]["f"]``, 0 on empty / ValueError."""
    if not generation:
        return 0.0
    try:
        return Rouge().get_scores(generation, reference)[0]["rouge-l"]["f"]
    except ValueError:
        return 0.0


@pytest.mark.parametrize(("reference", "generation"), PAIRS)
def test_paper_rouge_equals_the_rouge_package(reference: str, generation: str) -> None:
    assert rouge_l_f("rouge_paper")(reference, generation) == official(reference, generation)


def test_paper_rouge_is_case_sensitive_and_ours_is_not() -> None:
    paper, ours = rouge_l_f("rouge_paper"), rouge_l_f("rouge_score")
    assert paper("Yes", "yes") == 0.0
    assert ours("Yes", "yes") == 1.0
    assert paper("Yes", "Yes") == pytest.approx(1.0, abs=1e-8)  # the package's f carries a 1e-8 epsilon
    # whitespace tokens, so "mat." and "mat" match only because '.' splits sentences; "rains," != "rains"
    assert paper("It rains, it pours", "It rains it pours") < 1.0
    assert ours("It rains, it pours", "It rains it pours") == 1.0


def test_pinned_values() -> None:
    """A few hand-checkable values, so a change in the package shows up here."""
    paper = rouge_l_f("rouge_paper")
    # one sentence, LCS 5 of 6 reference / 5 generation tokens: P = 1, R = 5/6, F = 10/11
    assert paper("a cat sat on the mat", "a cat on the mat") == pytest.approx(10 / 11, abs=1e-7)
    # the package counts DISTINCT tokens ("the" twice counts once): R = 4/5, P = 4/4, F = 8/9
    assert paper("the cat sat on the mat", "the cat on the mat") == pytest.approx(8 / 9, abs=1e-7)
    # sentence order does not matter to the union LCS over '.'-split sentences
    assert paper("The cat sat. A dog ran.", "A dog ran. The cat sat.") == pytest.approx(1.0, abs=1e-7)


@pytest.mark.parametrize("generation", ["", ".", " . "])
def test_paper_rouge_scores_empty_generations_zero(generation: str) -> None:
    assert rouge_l_f("rouge_paper")("a reference", generation) == 0.0


def test_names() -> None:
    assert metric_name("rouge_score") == "rougeL"  # what every result so far was scored with
    assert metric_name("rouge_paper") == "rougeL_paper"
    with pytest.raises(ValueError, match="eval.rouge"):
        rouge_l_f("rouge2")


def test_reliability_rouge_paper_scores_a_long_reference_without_crashing() -> None:
    """The shape of Dolly row 620 (a 1,166-word response with no period): the package's recursive LCS rebuild
    exceeds Python's recursion limit; the score equals what the package gives with the limit raised."""
    import random
    import sys

    from rouge import Rouge

    from amole.evaluation.rouge_l import rouge_paper_f

    rng = random.Random(620)
    words = [rng.choice(["the", "model", "answers", "data", "site", "federation", "expert", "round"])
             for _ in range(1166)]
    reference, generated = " ".join(words), " ".join(words[:120])
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)  # Python's default: torch.compile raises it to 2000 in a process that compiled
    try:
        with pytest.raises(RecursionError):
            Rouge().get_scores(generated, reference)
        got = rouge_paper_f(reference, generated)
    finally:
        sys.setrecursionlimit(limit)
    sys.setrecursionlimit(20_000)
    try:
        want = Rouge().get_scores(generated, reference)[0]["rouge-l"]["f"]
    finally:
        sys.setrecursionlimit(limit)
    assert got == want and 0 < got < 1


def test_reliability_iterative_lcs_rebuild_equals_the_packages() -> None:
    import random

    from rouge import rouge_score as package

    from amole.evaluation.rouge_l import _recon_lcs_iterative

    rng = random.Random(0)
    for _ in range(300):
        x = [rng.choice("abcde") for _ in range(rng.randint(0, 30))]
        y = [rng.choice("abcdef") for _ in range(rng.randint(0, 30))]
        for exclusive in (True, False):
            ours, theirs = _recon_lcs_iterative(x, y, exclusive), package._recon_lcs(x, y, exclusive)
            assert len(ours) == len(theirs) and ours._ngrams == theirs._ngrams
