"""Plain and balanced accuracy against hand-computed values."""

import pytest

from objectives.accuracy import accuracy, at_chance, balanced_accuracy


def test_balanced_accuracy_does_not_reward_always_predicting_the_largest_class():
    labels = [0] * 9 + [1]
    assert accuracy([0] * 10, labels) == pytest.approx(0.9)
    assert balanced_accuracy([0] * 10, labels) == pytest.approx(0.5)  # recalls 1 and 0
    # recalls 8/9 and 1/1
    assert balanced_accuracy([0] * 8 + [1, 1], labels) == pytest.approx((8 / 9 + 1) / 2)
    # a class predicted but absent from the labels is a wrong answer, not a class of its own
    assert balanced_accuracy([0] * 9 + [2], labels) == pytest.approx(0.5)


def test_one_class_predicted_is_at_chance_however_the_recalls_round():
    labels = [0, 0, 1, 1, 1, 2, 2]
    always_one = balanced_accuracy([1] * 7, labels)  # recalls 0, 1, 0: a mean of floats, not exactly 1/3
    assert at_chance(always_one, 1 / 3)
    assert not at_chance(balanced_accuracy([0, 0, 1, 1, 1, 1, 1], labels), 1 / 3)  # recalls 1, 1, 0
    assert not at_chance(always_one, None)  # no chance level known: nothing is called so


def test_per_class_figures_and_the_confusion_matrix_count_by_hand():
    from objectives.accuracy import per_class

    labels = [0, 0, 0, 1, 1, 2]
    predicted = [0, 0, 1, 1, 0, 0]
    got = per_class(predicted, labels, 4)
    assert got["support"] == [3, 2, 1, 0]
    assert got["confusion_matrix"] == [[2, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert got["recall"] == [pytest.approx(2 / 3), 0.5, 0.0, None]  # class 3 has no sample
    assert got["precision"] == [0.5, 0.5, None, None]  # classes 2 and 3 never predicted
