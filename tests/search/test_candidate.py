import pytest

from hardware_targets.metric import Metric
from search.candidate import Budget, Candidate, CandidateResult
from search.errors import ConfigError


@pytest.mark.parametrize(
    "kwargs, field",
    [({"precision": "int4"}, "precision"), ({"sparsity": 1.5}, "sparsity"), ({"alpha": -0.1}, "alpha"),
     ({"temperature": 0.5}, "temperature"), ({"pruning": "random"}, "pruning"), ({"width": 0}, "width")],
)
def test_bad_knobs_name_the_parameter(kwargs, field):
    with pytest.raises(ConfigError, match=f"'{field}' parameter of Candidate"):
        Candidate(**kwargs)


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"epochs": 2.5}, {"timing_repeats": "30"},
                                    {"tuning_trials": True}, {"front_tuning_minutes": float("nan")}])
def test_bad_budget_names_the_parameter(kwargs):
    with pytest.raises(ConfigError, match=f"'{next(iter(kwargs))}' budget \\(budget.{next(iter(kwargs))} in a spec"):
        Budget(**kwargs)


def test_the_teacher_trains_twice_the_students_epochs_unless_told_and_keeps_them_at_every_rung():
    from search.workers import rung_budget

    assert Budget(epochs=5).teacher_epochs == 10 and Budget().teacher_epochs == 30  # 15 epochs: the former 30
    assert Budget(epochs=5, teacher_epochs=3).teacher_epochs == 3
    assert rung_budget(Budget(epochs=9)).teacher_epochs == 18  # a halving rung trains less; its teacher is the same
    with pytest.raises(ConfigError,
                       match=r"'teacher_epochs' budget \(budget.teacher_epochs in a spec, --teacher-epochs\)"):
        Budget(teacher_epochs=0)


@pytest.mark.parametrize("seed", [-1, 2**32, 1.0])
def test_a_seed_every_library_takes(seed):
    with pytest.raises(ConfigError, match="'seed' parameter of Candidate must be an integer in"):
        Candidate(seed=seed)


def test_bad_provenance():
    with pytest.raises(ValueError, match="provenance"):
        Metric(1.0, "ms", "guessed")


def test_result_round_trips_through_json():
    import json

    r = CandidateResult(Candidate(width=0.5), "digits", "host", {"accuracy": Metric(0.9, "fraction", "measured")},
                        {}, {"train": 1.0}, {"torch": "x"})
    back = CandidateResult.from_dict(json.loads(r.to_json()))
    assert back == r and back.candidate.width == 0.5
