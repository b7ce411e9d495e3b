"""The package's layout, checked from its imports: no import circles (imports inside functions
count), the core imports no variant, evaluation or tool except through `justrl_min.options`, and
a plain JustRL run loads only what it needs.

    python -m pytest -q tests/test_layout.py      # prints nothing unless a rule is broken
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "justrl_min"
FOLDERS = ("variants", "eval", "tools")  # beside the core, which is the package's own modules
CHOOSER = "justrl_min.options"
"""The one core module that imports variants (and the curves tool), inside the functions that choose them."""
CORE_LINES_BUDGET = 6_560
"""What `python train.py recipes/tiny_cpu.yaml` loads by its end, in lines: 6,660 in 28 modules before the layout
change, 6,129 after it, 6,378 in 29 with the run lock and checkpoint manifests (issue 32), the end-of-run
curves' 350 included (2026-12-05); 6,465 with the plateau stop (issue 34) and the table of synthetic tasks and
the worked example of a prompt (issue 31); 6,514 with the replay seam's default (`options.NoReplay`) and
its two config fields (issue 34); 6,557 with `trainer.Scoring` (the scorer's settings built once, for the
trainer, the estimator's calibration and the benches) and tcmalloc for every CPU run (issue 33). A budget,
so that the core does not grow silently: raise it in the change that adds to the core, saying why. Issue
35's goal of 3,000 is not met: the same modules hold ~4,100 lines of code without docstrings, comments
and blank lines."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every project module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("justrl_min"):
            for alias in node.names:  # `from justrl_min.eval import evaluate` names a module
                found.add(f"{node.module}.{alias.name}" if (PACKAGE.parent / f"{node.module}.{alias.name}".replace(
                    ".", "/")).with_suffix(".py").is_file() else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("justrl_min")}
    return found - {"justrl_min"}


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def folder_of(module: str) -> str:
    if module == "justrl_min.__main__":  # `python -m justrl_min`: the `justrl` command's entry point
        return "tools"
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in FOLDERS else "core"


def test_no_import_circles():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_imports_point_from_tools_to_evaluation_to_variants_to_the_core():
    rank = {"core": 0, "variants": 1, "eval": 2, "tools": 3}
    upward = [f"{module} imports {target}" for module, targets in import_graph().items() for target in targets
              if rank[folder_of(target)] > rank[folder_of(module)] and module != CHOOSER]
    assert not upward, "imports from a lower layer up to a higher one:\n" + "\n".join(upward)


def test_the_chooser_imports_variants_only_when_asked():
    tree = ast.parse((PACKAGE / "options.py").read_text())
    top_level = {node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    assert not {m for m in top_level if m.startswith("justrl_min") and folder_of(m) != "core"}


def loaded_by_a_plain_run(tmp_path: Path) -> dict[str, int]:
    """{module: lines} of every project module a one-step tiny run has loaded by its end."""
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['train.py', 'recipes/tiny_cpu.yaml', 'train.steps=1', 'run.name=plain',\n"
        f"            'run.output_dir={tmp_path}', 'run.resume=false', 'log.tensorboard=false']\n"
        "try:\n    runpy.run_path('train.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "for m in list(sys.modules.values()):\n"
        "    if m.__name__.startswith('justrl_min') and getattr(m, '__file__', None):\n"
        "        print('MODULE', m.__name__, sum(1 for _ in open(m.__file__)))\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return {line.split()[1]: int(line.split()[2]) for line in out.stdout.splitlines() if line.startswith("MODULE ")}


def test_a_plain_run_loads_the_core_only(tmp_path):
    loaded = loaded_by_a_plain_run(tmp_path)
    options = sorted(m for m in loaded if folder_of(m) in ("variants", "eval"))
    assert not options, f"a plain tiny run loaded options it did not ask for: {options}"
    assert sum(loaded.values()) <= CORE_LINES_BUDGET, sorted(loaded.items(), key=lambda kv: -kv[1])
