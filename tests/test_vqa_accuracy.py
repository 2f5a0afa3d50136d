"""The official VQA accuracy (aape_jax.vqa): leave-one-out scoring, normalisation, the two code versions, errors.

Expected values are computed by hand in the comments. With ten human answers of
which m equal the prediction, the m subsets that leave out a matching answer
hold m-1 matches and the 10-m others hold m, each scoring min(matches / 3, 1).
"""

import pytest

from aape_jax import vqa


def _ten(matching: int, answer: str = "2", other: str = "3") -> list[str]:
    return [answer] * matching + [other] * (10 - matching)


@pytest.mark.parametrize(
    "matching, expected",
    [
        (0, 0.0),  # every subset: 0 matches -> 0
        (1, 0.3),  # 1 subset with 0 -> 0; 9 subsets with 1 -> 1/3; (9/3)/10 = 0.3
        (2, 0.6),  # 2 subsets with 1 -> 1/3; 8 subsets with 2 -> 2/3; (2/3 + 16/3)/10 = 0.6
        (3, 0.9),  # 3 subsets with 2 -> 2/3; 7 subsets with 3 -> 1; (2 + 7)/10 = 0.9
        (4, 1.0),  # 4 subsets with 3 -> 1; 6 subsets with 4 -> 1
        (10, 1.0),
    ],
)
def test_leave_one_out_scores(matching, expected):
    for style in vqa.STYLES:
        assert vqa.accuracy("2", _ten(matching), style=style) == pytest.approx(expected, abs=1e-12)


def test_number_words_become_digits_when_answers_vary():
    # Varied answers, so both sides are normalised: "two" -> "2" matches 2 of ten -> 0.6.
    assert vqa.accuracy("two", _ten(2), style="master") == pytest.approx(0.6)
    # And the other way round: human "two" -> "2" meets prediction "2".
    assert vqa.accuracy("2", _ten(3, answer="two"), style="master") == pytest.approx(0.9)
    assert vqa.normalize_answer("None") == "0"


def test_articles_are_dropped():
    # "the dog" -> "dog", "a dog" -> "dog": 4 of ten match -> 1.0.
    answers = ["the dog", "a dog", "dog", "an dog"] + ["cat"] * 6
    assert vqa.accuracy("The dog", answers) == pytest.approx(1.0)
    assert vqa.normalize_answer("the cat on a mat") == "cat on mat"


def test_punctuation():
    # "yes." -> "yes": 3 of ten -> 0.9.
    assert vqa.accuracy("yes.", _ten(3, answer="yes", other="no")) == pytest.approx(0.9)
    assert vqa.normalize_answer("black/white") == "black white"  # glued mark -> space
    assert vqa.normalize_answer("hi ,there") == "hi there"  # mark next to a space -> deleted
    assert vqa.normalize_answer("1,000 (a/b)") == "1000 ab"  # digit,digit anywhere -> all marks deleted
    assert vqa.normalize_answer("3.5") == "3.5"  # a period before a digit stays
    assert vqa.normalize_answer("e.g.") == "eg"


def test_at_most_32_periods_are_removed():
    # The official `sub("", text, re.UNICODE)` passes 32 as the replacement count.
    assert vqa.normalize_answer("a" + "." * 40) == "a" + "." * 8


def test_contractions():
    assert vqa.normalize_answer("dont") == "don't"
    assert vqa.normalize_answer("Whats up") == "what's up"
    # "dont" -> "don't" matches 2 of ten -> 0.6.
    assert vqa.accuracy("dont", _ten(2, answer="don't", other="no")) == pytest.approx(0.6)


def test_whitespace_is_cleaned_in_master():
    # "\tyes\n" -> "yes"; the answers are all "yes" so nothing else happens; 10 match -> 1.0.
    assert vqa.accuracy("\tyes\n", ["yes"] * 10, style="master") == 1.0
    assert vqa.accuracy("yes", [" yes "] * 10, style="master") == 1.0


def test_master_does_not_normalise_when_all_answers_agree():
    # All ten say "2": master leaves "two" as it is -> no match -> 0;
    # update_style always normalises the prediction: "two" -> "2" -> 10 matches -> 1.0.
    answers = ["2"] * 10
    assert vqa.accuracy("two", answers, style="master") == 0.0
    assert vqa.accuracy("two", answers, style="update_style") == 1.0
    # Likewise for punctuation: "yes." only matches in update_style.
    assert vqa.accuracy("yes.", ["yes"] * 10, style="master") == 0.0
    assert vqa.accuracy("yes.", ["yes"] * 10, style="update_style") == 1.0


def test_update_style_never_digit_normalises_the_human_answers():
    # update_style: human "two" stays "two" (only punctuation is processed), prediction "2" stays "2":
    # no match -> 0; master normalises both: 3 of ten -> 0.9.
    answers = _ten(3, answer="two")
    assert vqa.accuracy("2", answers, style="update_style") == 0.0
    assert vqa.accuracy("2", answers, style="master") == pytest.approx(0.9)
    # Human answers do get the punctuation step in update_style: "red, white" -> "red white"
    # (a mark next to a space is deleted) matches 3 of ten -> 0.9.
    assert vqa.accuracy("red white", _ten(3, answer="red, white"), style="update_style") == pytest.approx(0.9)
    # But a glued mark becomes a space that update_style never strips from human answers:
    # "yes!" -> "yes " != "yes" -> 0; master cleans and re-joins the words: 3 of ten -> 0.9.
    answers = _ten(3, answer="yes!", other="no")
    assert vqa.accuracy("yes", answers, style="update_style") == 0.0
    assert vqa.accuracy("yes", answers, style="master") == pytest.approx(0.9)


def test_fewer_than_ten_answers():
    # Three answers, two "2": leaving out a "2" leaves 1 match -> 1/3 (twice); leaving out "3" leaves 2 -> 2/3.
    assert vqa.accuracy("2", ["2", "2", "3"]) == pytest.approx((1 / 3 + 1 / 3 + 2 / 3) / 3)


def test_mean_accuracy_is_a_percentage_over_predicted_ids_only():
    human = {1: _ten(10), 2: _ten(2), 3: _ten(0), 4: _ten(10)}
    # Question 4 has no prediction and is not scored: (1.0 + 0.6 + 0.0) / 3 * 100 = 53.33...
    assert vqa.mean_accuracy({1: "2", 2: "2", 3: "2"}, human) == pytest.approx(160 / 3)
    # The style reaches each question: "two" against all-"2" answers is 0 in master, 1 in update_style.
    assert vqa.mean_accuracy({1: "two"}, human, style="master") == 0.0
    assert vqa.mean_accuracy({1: "two"}, human, style="update_style") == 100.0


def test_errors():
    with pytest.raises(ValueError, match="'official'"):
        vqa.accuracy("2", ["2"], style="official")
    with pytest.raises(ValueError, match="no human answers"):
        vqa.accuracy("2", [])
    with pytest.raises(TypeError, match="str"):
        vqa.accuracy("2", "2")
    with pytest.raises(ValueError, match="'loose'"):
        vqa.mean_accuracy({1: "2"}, {1: ["2"]}, style="loose")
    with pytest.raises(ValueError, match="no predictions"):
        vqa.mean_accuracy({}, {1: ["2"]})


def test_missing_human_answers_are_named_up_to_ten():
    predictions = {f"q{i}": "yes" for i in range(12)}
    with pytest.raises(ValueError) as e:
        vqa.mean_accuracy(predictions, {"q0": ["yes"]})
    message = str(e.value)
    assert "11 predicted question ids" in message
    assert "'q1'" in message and "'q10'" in message
    assert "'q11'" not in message and "and 1 more" in message
