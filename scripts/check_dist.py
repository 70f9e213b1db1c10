"""Check a built sdist and wheel against the source tree (used by scripts/test.sh and the release workflow).

    python scripts/check_dist.py DIST_FOLDER

The wheel must hold every file of the ``pytest_forgetting`` package (modules, subpackages such as
``pytest_forgetting/tasks/`` and any packaged data), no test or example file, and the ``pytest11``
entry point that lets pytest find the plugin; the sdist must hold the same package files plus
``pyproject.toml`` and ``README.md``. Exits 1 with one line per problem.
"""

from __future__ import annotations

import configparser
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "pytest_forgetting"
#: subpackages the wheel must hold even if the tree looked at lacks them (package discovery is by pattern)
SUBPACKAGES = (
    "checkpoints",
    "checkpoints/loaders",
    "engine",
    "finetune",
    "finetune/strategies",
    "report",
    "stats",
    "tasks",
)


def source_files() -> set[str]:
    """The package's files as they should appear in a wheel (posix paths, no bytecode)."""
    out = {f"{PACKAGE}/{sub}/__init__.py" for sub in SUBPACKAGES}
    for path in (ROOT / PACKAGE).rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in {".pyc", ".pyo"}:
            out.add(path.relative_to(ROOT).as_posix())
    return out


def check(dist: Path) -> list[str]:
    problems: list[str] = []
    wheels = sorted(dist.glob("*.whl"))
    sdists = sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        return [f"{dist}: expected one wheel and one sdist, found {[p.name for p in wheels + sdists]}"]
    expected = source_files()

    with zipfile.ZipFile(wheels[0]) as whl:
        names = set(whl.namelist())
        in_package = {n for n in names if n.startswith(PACKAGE + "/")}
        for missing in sorted(expected - in_package):
            problems.append(f"{wheels[0].name}: missing {missing}")
        for extra in sorted(
            n for n in names if n.split("/")[0] in {"tests", "example_project", "benchmarks", "scripts"}
        ):
            problems.append(f"{wheels[0].name}: should not contain {extra}")
        entry_points = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        if not entry_points:
            problems.append(f"{wheels[0].name}: no entry_points.txt")
        else:
            parser = configparser.ConfigParser()
            parser.read_string(whl.read(entry_points[0]).decode())
            if (
                not parser.has_section("pytest11")
                or parser.get("pytest11", "forgetting", fallback=None) != f"{PACKAGE}.plugin"
            ):
                problems.append(f"{wheels[0].name}: no pytest11 entry point 'forgetting = {PACKAGE}.plugin'")

    with tarfile.open(sdists[0]) as sdist:
        # sdist members are prefixed with "NAME-VERSION/"
        members = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
        for missing in sorted((expected | {"pyproject.toml", "README.md"}) - members):
            problems.append(f"{sdists[0].name}: missing {missing}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    problems = check(Path(argv[0]))
    for line in problems:
        print(line, file=sys.stderr)
    if not problems:
        print(
            f"check_dist: wheel and sdist in {argv[0]} hold all {len(source_files())} package files and the pytest11 entry point"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
