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
