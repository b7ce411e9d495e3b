"""Packaging: pyproject.toml against requirements*.txt, the version, the `justrl` command, recipes by name.

The wheel itself (its contents, an install in a clean venv, the command run from another directory) is
checked by .ci/run, which builds it; these tests need no build and no network.
"""

import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import justrl_min
from justrl_min.config import ConfigError
from justrl_min.tools import cli, recipe_files
from tests.core.test_trainer import overrides

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the package itself needs 3.10

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def requirement_set(lines) -> set[str]:
    """Requirements in one canonical spelling (name normalised, specifiers sorted), `-r` includes left out."""
    found = set()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-r "):
            req = Requirement(line)
            extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
            found.add(f"{req.name.lower().replace('_', '-')}{extras}{','.join(sorted(map(str, req.specifier)))}")
    return found


def read_requirements(path: Path) -> set[str]:
    return requirement_set(path.read_text().splitlines())


# --------------------------------------------------------------------------------------------------
# One list of dependencies


def test_requirements_txt_is_the_dependencies_plus_the_dev_extra():
    dependencies = requirement_set(PROJECT["dependencies"])
    dev = requirement_set(PROJECT["optional-dependencies"]["dev"])
    assert not dependencies & dev
    assert read_requirements(ROOT / "requirements.txt") == dependencies | dev


@pytest.mark.parametrize("path", sorted(ROOT.glob("requirements-*.txt")), ids=lambda p: p.name)
def test_each_requirements_file_is_requirements_txt_plus_the_extra_of_its_name(path):
    extra = path.stem.removeprefix("requirements-")
    extras = PROJECT["optional-dependencies"]
    assert extra in extras, f"{path.name} has no extra {extra!r} in pyproject.toml"
    assert "-r requirements.txt" in path.read_text().splitlines()
    assert read_requirements(path) == requirement_set(extras[extra])


def test_the_drift_check_sees_a_changed_pin():
    # The canonical spelling must keep specifiers apart, or a bumped pin would compare equal.
    assert requirement_set(["vllm==0.32.0"]) != requirement_set(["vllm==0.33.0"])
    assert requirement_set(["Math_Verify[antlr4_13_2] >=0.9, <0.10"]) == requirement_set(
        ["math-verify[antlr4_13_2]<0.10,>=0.9"])


def test_the_version_has_one_source():
    assert PROJECT["dynamic"] == ["version"] and "version" not in PROJECT
    assert PYPROJECT["tool"]["hatch"]["version"]["path"] == "justrl_min/__init__.py"
    assert justrl_min.__version__.count(".") == 2
    assert Path(justrl_min.__file__).resolve() == ROOT / "justrl_min" / "__init__.py"  # a package, not a namespace


def test_the_entry_point_is_the_cli_main_and_the_wheel_carries_the_recipes():
    assert PROJECT["scripts"] == {"justrl": "justrl_min.tools.cli:main"}
    assert PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"] == {"recipes": "justrl_min/recipes"}
    assert recipe_files.RECIPE_DIR_CANDIDATES[0] == ROOT / "justrl_min" / "recipes"


# --------------------------------------------------------------------------------------------------
# The justrl command


def test_every_subcommand_present_has_a_main_taking_argv():
    for name, sub in cli.SUBCOMMANDS.items():
        if name in ("doctor", "standin") and not _present(sub.module):
            continue  # other branches add these modules; the missing-module message covers them meanwhile
        main = cli.load_main(name, sub)
        assert list(inspect.signature(main).parameters)[0] == "argv", name


def _present(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def test_help_lists_every_subcommand_with_its_summary(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, sub in cli.SUBCOMMANDS.items():
        assert f"  {name}" in out and sub.summary in out
    assert cli.main([]) == 2  # no subcommand: the same text, but a failure


def test_version_flag(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"justrl-min {justrl_min.__version__}\n"


def test_an_unknown_subcommand_is_named_with_the_closest_one(capsys):
    assert cli.main(["trian", "tiny_cpu"]) == 2
    err = capsys.readouterr().err
    assert "unknown subcommand 'trian'" in err and "did you mean 'train'?" in err


def test_a_subcommand_whose_module_is_missing_says_so(capsys, monkeypatch):
    monkeypatch.setitem(cli.SUBCOMMANDS, "later", cli.Subcommand("justrl_min.not_written_yet", "a later tool"))
    assert cli.main(["later", "--x"]) == 2
    err = capsys.readouterr().err
    assert f"`justrl later` is not in this version of justrl-min ({justrl_min.__version__})" in err
    assert "justrl_min.not_written_yet is missing" in err
    cli.main(["--help"])
    assert re.search(r"^  later +a later tool  \(not in this version\)$", capsys.readouterr().out, re.MULTILINE)


def test_a_subcommand_whose_dependency_is_missing_names_the_extra(capsys, monkeypatch, tmp_path):
    (tmp_path / "needs_a_package.py").write_text("import no_such_package_xyz\n\ndef main(argv=None):\n    return 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.SUBCOMMANDS, "optional", cli.Subcommand("needs_a_package", "uses an extra", extra="dev"))
    assert cli.main(["optional"]) == 2
    err = capsys.readouterr().err
    assert "`justrl optional` needs the package 'no_such_package_xyz', which is not installed" in err
    assert "pip install 'justrl-min[dev]'" in err


def test_arguments_reach_the_subcommand(capsys, monkeypatch, tmp_path):
    (tmp_path / "echo_argv.py").write_text("def main(argv=None):\n    print(argv)\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.SUBCOMMANDS, "echo", cli.Subcommand("echo_argv", "prints its arguments"))
    assert cli.main(["echo", "a", "--b=1"]) == 3
    assert capsys.readouterr().out == "['a', '--b=1']\n"


def test_eval_help_is_the_eval_script_options(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["eval", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: justrl eval") and "--benchmarks" in out and "--data-dir" in out


def test_the_checkout_scripts_run_the_same_code_from_another_directory(tmp_path):
    for script, expected in (("train.py", "justrl train RECIPE"), ("eval.py", "usage: python eval.py"),
                             ("data/prepare.py", "usage: python data/prepare.py")):
        done = subprocess.run([sys.executable, str(ROOT / script), "--help"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0 and expected in done.stdout, (script, done.stdout, done.stderr)


def test_the_command_and_its_help_import_no_torch():
    # `justrl --help` stays instant: the subcommands' modules (torch, transformers) load only when run.
    code = ("import sys; from justrl_min.tools import cli; cli.usage(); "
            "print(sorted({'torch', 'transformers'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "[]\n", done.stderr


def test_python_dash_m_justrl_min_is_the_command(tmp_path):
    done = subprocess.run([sys.executable, "-m", "justrl_min", "--version"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stdout == f"justrl-min {justrl_min.__version__}\n", done.stderr


def test_train_by_recipe_name(warm_model, tmp_path, capsys):
    run_dir = tmp_path / "by_name"
    assert cli.main(["train", "tiny_cpu", *overrides(warm_model, run_dir, "train.steps=1")]) == 0
    assert (run_dir / "metrics.jsonl").is_file()
    assert f"run directory: {run_dir}" in capsys.readouterr().out


def test_train_with_an_unknown_recipe_lists_the_shipped_ones(capsys):
    assert cli.main(["train", "tiny_gpu"]) == 2
    err = capsys.readouterr().err
    assert "recipe not found: tiny_gpu is neither a file nor a shipped recipe" in err and "tiny_cpu" in err


# --------------------------------------------------------------------------------------------------
# Recipes by name


def test_shipped_recipes_are_the_files_under_recipes():
    recipes = recipe_files.shipped_recipes()
    assert {path.resolve() for path in recipes.values()} == {p.resolve() for p in (ROOT / "recipes").rglob("*.yaml")}
    assert recipes["deepseek_1p5b"] == ROOT / "recipes" / "deepseek_1p5b.yaml"


def test_every_shipped_recipe_has_a_one_line_description():
    for path in recipe_files.shipped_recipes().values():
        assert recipe_files.describe(path), f"{path}: the first comment line describes the recipe"


def test_recipes_lists_names_with_descriptions(capsys):
    assert cli.main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(recipe_files.shipped_recipes())
    tiny = next(line for line in lines if line.startswith("tiny_cpu "))
    assert tiny.split(None, 1)[1] == ("The embedded default: a ~0.5M-parameter Qwen2 model learning single-digit "
                                      "addition on 2 CPU cores.")


@pytest.fixture
def two_layouts(tmp_path, monkeypatch):
    """A wheel's folder (justrl_min/recipes) and a checkout's (recipes), each with one recipe of its own."""
    wheel, checkout = tmp_path / "wheel" / "recipes", tmp_path / "checkout" / "recipes"
    (wheel / "ablations").mkdir(parents=True)
    (wheel / "ablations" / "overlong.yaml").write_text("# Overlong penalty.\ntrain: {steps: 1}\n")
    (wheel / "base.yaml").write_text("train: {steps: 1}\n")
    checkout.mkdir(parents=True)
    (checkout / "checkout_only.yaml").write_text("# Only in the checkout.\n")
    monkeypatch.setattr(recipe_files, "RECIPE_DIR_CANDIDATES", (wheel, checkout))
    return wheel, checkout


def test_the_wheel_folder_comes_first_and_names_include_subfolders(two_layouts):
    wheel, _ = two_layouts
    assert recipe_files.shipped_recipes() == {"ablations/overlong": wheel / "ablations" / "overlong.yaml",
                                              "base": wheel / "base.yaml"}
    assert recipe_files.find_recipe("ablations/overlong") == wheel / "ablations" / "overlong.yaml"
    assert recipe_files.find_recipe("ablations/overlong.yaml") == wheel / "ablations" / "overlong.yaml"
    assert recipe_files.describe(wheel / "ablations" / "overlong.yaml") == "Overlong penalty."
    assert recipe_files.describe(wheel / "base.yaml") == ""


def test_the_checkout_folder_serves_when_there_is_no_wheel_folder(two_layouts, monkeypatch):
    wheel, checkout = two_layouts
    monkeypatch.setattr(recipe_files, "RECIPE_DIR_CANDIDATES", (wheel.parent / "absent", checkout))
    assert recipe_files.shipped_recipes() == {"checkout_only": checkout / "checkout_only.yaml"}


def test_a_path_wins_over_a_name(two_layouts, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.yaml").write_text("train: {steps: 2}\n")
    assert recipe_files.find_recipe("base.yaml") == Path("base.yaml")  # the file here, not the shipped one
    assert recipe_files.find_recipe("base") == two_layouts[0] / "base.yaml"


def test_no_recipe_folder_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(recipe_files, "RECIPE_DIR_CANDIDATES", (tmp_path / "a", tmp_path / "b"))
    with pytest.raises(ConfigError, match="no shipped recipes: none of"):
        recipe_files.find_recipe("tiny_cpu")
