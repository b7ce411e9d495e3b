import pytest

from justrl_min import tiny


@pytest.fixture(scope="session")
def warm_model(tmp_path_factory):
    """A briefly warm-started tiny model: it writes boxed answers, right some of the time, so
    rewards vary within groups and the update has something to do."""
    return tiny.prepare_warm_start(tmp_path_factory.mktemp("warm") / "model", steps=120, log=lambda *_: None)
