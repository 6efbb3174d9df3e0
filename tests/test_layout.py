"""The tree reads as the data flow: zapstream <- ingest <- processors; projections import
only zapstream; only the command modules (cli, run, chat, operate, dlq) import the packages
(STYLE.md rule 4)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "zapstream": {"zapstream"},
    "ingest": {"zapstream", "ingest"},
    "processors": {"zapstream", "ingest", "processors"},
    "projections": {"zapstream", "projections"},
}
WIRING = {
    "zapstream/cli.py",
    "zapstream/run.py",
    "zapstream/chat.py",
    "zapstream/operate.py",
    "zapstream/dlq.py",
    "zapstream/inspect.py",
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & set(ALLOWED)


def test_imports_flow_one_way() -> None:
    problems = []
    for package, allowed in ALLOWED.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative in WIRING:
                continue
            wrong = imported_packages(path) - allowed
            if wrong:
                problems.append(f"{relative} imports {sorted(wrong)}")
    assert problems == []


def test_init_files_stay_empty() -> None:
    for package in ALLOWED:
        init = ROOT / package / "__init__.py"
        body = [line for line in init.read_text().splitlines() if line.strip()]
        assert all(line.startswith("__version__") for line in body), f"{init} re-exports"


def test_no_grab_bag_modules() -> None:
    banned = {"utils.py", "helpers.py", "common.py", "core.py", "base.py", "misc.py"}
    found = [
        p.relative_to(ROOT).as_posix()
        for package in [*ALLOWED, "tests"]
        for p in (ROOT / package).rglob("*.py")
        if p.name in banned
    ]
    assert found == []
