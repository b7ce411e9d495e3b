"""The leaf every layer may import: the configuration error, and `package.module:callable` lookup.

`load_callable` is how a name in a table or a recipe becomes code: a user's reward function or
grader (`reward.function`, `reward.by_source`), and the variants the core names but does not
import (`justrl_min.options`, the verifier's `deepscaler` mode), which load only when chosen.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


class ConfigError(ValueError):
    """A recipe or override that cannot be turned into a valid Config."""


def load_callable(spec: str, key: str = "reward.function") -> Callable:
    """`package.module:callable` -> the callable, with errors that name the config key and the spec."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{key}={spec!r}: expected the form package.module:callable")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{key}={spec!r}: cannot import {module_name}: {e}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{key}={spec!r}: {module_name} has no callable {attr!r}")
    return fn
