"""The layout shows the architecture: imports point one way (the import-linter contract in pyproject.toml),
imports sit at the top of modules, and developer tooling stays outside the package."""

import ast
import subprocess
import sys
from pathlib import Path

from mdp_assets_tests.conftest import REPOSITORY

PACKAGE = REPOSITORY / "mdp_assets"
# Imports that must stay inside a function, each for a reason given beside it in the code.
LOCAL_IMPORTS_ALLOWED = {
    ("engines/cellprofiler/containers.py", "dagster_k8s"),  # an optional extra
    ("engines/cellprofiler/runner.py", "cellprofiler"),  # runs in CellProfiler's own Python 3.9 environment
    ("engines/cellprofiler/runner.py", "dagster_pipes"),
    # runs in CellProfiler's environment; cellprofiler-core is imported once it is told to be headless
    ("engines/cellprofiler/inspect_pipeline.py", "cellprofiler_core"),
    # opt-in feature groups: cp-measure brings scipy.stats and numba (~150 MB, ~1 s) into every features process
    ("science/features.py", "cp_measure"),
    # copairs brings statsmodels and scipy.stats (0.7 s) into every process that loads the definitions
    ("science/profile_quality.py", "copairs"),
}


def test_imports_point_one_way():
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--config", str(REPOSITORY / "pyproject.toml")], cwd=REPOSITORY,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_imports_are_at_the_top_of_modules():
    found = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for function in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    found |= {(path.relative_to(PACKAGE).as_posix(), a.name.split(".")[0]) for a in node.names}
                elif isinstance(node, ast.ImportFrom):
                    found.add((path.relative_to(PACKAGE).as_posix(), (node.module or "").split(".")[0]))
    assert found == LOCAL_IMPORTS_ALLOWED


def test_developer_tools_live_outside_the_package():
    assert (REPOSITORY / "tools" / "local_stack.py").exists()
    assert not list(PACKAGE.rglob("local_stack.py"))
    package = subprocess.run([sys.executable, "-c", "import setuptools; print(setuptools.find_packages("
                              f"where={str(REPOSITORY)!r}, include=['mdp_assets*']))"],
                             capture_output=True, text=True, check=True).stdout
    assert "tools" not in package
