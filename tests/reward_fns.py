"""Reward functions for tests, imported by `reward.function=tests.reward_fns:NAME`."""

import math


def half_if_golds_match(responses, golds, problems):
    """0.5 per response; asserts the records line up with the golds (one per response)."""
    assert len(responses) == len(golds) == len(problems)
    assert [p.answer for p in problems] == list(golds)
    return [0.5] * len(responses)


def one_value(responses, _golds, _problems):
    return [1.0] if len(responses) > 1 else [1.0, 2.0]


def a_nan(responses, _golds, _problems):
    return [math.nan] + [0.0] * (len(responses) - 1)


def hangs(_response, _gold):
    """A grader (`reward.by_source`) that never answers: the verifier pool's deadline must cut it."""
    import time

    time.sleep(60)
    return 1.0


def stalls_on_hang(responses, _golds, _problems):
    """`reward.function` that never answers for a group whose first response is "hang", raises for one
    whose first response is "raise", and gives 0.25 per response otherwise."""
    import time

    if responses[0] == "hang":
        time.sleep(60)
    if responses[0] == "raise":
        raise RuntimeError("a bug in the reward function")
    return [0.25] * len(responses)
