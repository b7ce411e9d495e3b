import pytest

from justrl_min import tiny


@pytest.fixture(scope="session")
def warm_model(tmp_path_factory):
    """A briefly warm-started tiny model: it writes boxed answers, right some of the time, so
    rewards vary within groups and the update has something to do."""
    return tiny.prepare_warm_start(tmp_path_factory.mktemp("warm") / "model", steps=120, log=lambda *_: None)


@pytest.fixture(scope="session")
def standin_folder(tmp_path_factory):
    """The DeepSeek-R1-Distill-Qwen-1.5B stand-in's narrow test variant (real tokenizer and vocabulary,
    128-wide, one layer), built once per session or once per JUSTRL_CACHE (tests/standin_models.py)."""
    from tests import standin_models

    return standin_models.narrow_standin(standin_models.cache_root(tmp_path_factory))


@pytest.fixture(scope="session")
def standin_tokenizer(standin_folder):
    from justrl_min.model import load_tokenizer

    return load_tokenizer(str(standin_folder))


@pytest.fixture(scope="session")
def rigged_standin(standin_folder, tmp_path_factory):
    """The narrow stand-in with one known next-token distribution everywhere (EOS and gap ids often)."""
    from tests import standin_models

    return standin_models.rig_constant_next_token(standin_folder, standin_models.cache_root(tmp_path_factory))
