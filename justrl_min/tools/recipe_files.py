"""The shipped recipes, found by name: `justrl train deepseek_1p5b`, `justrl recipes`.

    justrl recipes            # each shipped recipe's name and one-line description

A recipe's name is its path under `recipes/` without `.yaml` (`tiny_cpu`, `ablations/overlong`); its
description is the first comment line of the file. The folder is `recipes/` at the repository root in
a checkout or an editable install, and `justrl_min/recipes/` inside the wheel (pyproject.toml copies
it there), so the same names work in all three.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from justrl_min.config import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # justrl_min/
# Inside the wheel first; a checkout (or an editable install, which imports from the checkout) has none.
RECIPE_DIR_CANDIDATES = (PACKAGE_DIR / "recipes", PACKAGE_DIR.parent / "recipes")


def recipes_dir() -> Path:
    for candidate in RECIPE_DIR_CANDIDATES:
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"no shipped recipes: none of {', '.join(map(str, RECIPE_DIR_CANDIDATES))} exists")


def shipped_recipes() -> dict[str, Path]:
    """{name: path} of every shipped recipe, subfolders included, sorted by name."""
    root = recipes_dir()
    return {path.relative_to(root).with_suffix("").as_posix(): path for path in sorted(root.rglob("*.yaml"))}


def find_recipe(name_or_path: str | Path) -> Path:
    """An existing file as given, else the shipped recipe of that name (`.yaml` optional)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    recipes = shipped_recipes()
    name = path.as_posix().removesuffix(".yaml")
    if name in recipes:
        return recipes[name]
    raise ConfigError(f"recipe not found: {name_or_path} is neither a file nor a shipped recipe "
                      f"({', '.join(recipes)}; `justrl recipes` describes them)")


def describe(path: Path) -> str:
    """The recipe's first comment line, without the `#`."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="justrl recipes", description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    recipes = shipped_recipes()
    width = max(map(len, recipes), default=0)
    for name, path in recipes.items():
        print(f"{name:{width}s}  {describe(path)}")
    return 0
