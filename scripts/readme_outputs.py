"""Regenerate the printed outputs in README.md from real runs.

    .venv/bin/python scripts/readme_outputs.py            # every output (runs scripts/premerge.sh: about a minute)
    .venv/bin/python scripts/readme_outputs.py NAME ...   # only these
    .venv/bin/python scripts/readme_outputs.py --list     # the names, commands and whether each is cheap

Each output NAME is a command run from the repository root with a fixed environment (one thread,
``PYTHONHASHSEED=0``, an 80-column terminal, no progress lines, a fresh cache folder; the seeds are
the plugin's and the example's own fixed ones) and an extractor that cuts the part the README shows.
The script writes ``docs/readme-outputs/NAME.txt`` (a header with the command, the environment, a
hash of the inputs that determine the output and a hash of the body, then the body) and rewrites
the README block between ``<!-- readme-output: NAME -->`` and ``<!-- /readme-output -->``.

``tests/contracts/test_readme.py`` reruns the cheap outputs and compares them with the README; for the
expensive ones (they need the example's checkpoints) it checks that the README block equals the
committed file, that the file's body hash and command are this script's, and that the inputs hash
matches the files as they are now. A change to the plugin that changes the printed numbers is not
an input (that would make every commit stale): rerun this script after one.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
OUT_DIR = ROOT / "docs" / "readme-outputs"
PY = ".venv/bin/python"

ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONHASHSEED": "0",
    "COLUMNS": "80",
    "FORGETTING_PROGRESS": "off",
}

EXAMPLE_INPUTS = [
    "scripts/premerge.sh",
    "scripts/setup.sh",
    "constraints.txt",
    "example_project/cnn.py",
    "example_project/build_checkpoints.py",
    "example_project/conftest.py",
    "example_project/pyproject.toml",
    "example_project/tests/test_retention.py",
    "example_project/tests/test_finetune_property.py",
]


def _section(text: str, start: str, stop: Callable[[str], bool]) -> str:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(start):
            out = []
            for later in lines[i:]:
                if out and stop(later):
                    break
                out.append(later.rstrip())
            return "\n".join(out).strip("\n")
    raise ValueError(f"no line starting with {start!r} in the output")


def summary_table(text: str) -> str:
    """The forgetting summary: its ===== title, the table, the legend and the ranking (up to the
    "forgetting: wrote" lines, the next ===== section or a blank line)."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if "forgetting summary" in line and line.startswith("="))
    out = [lines[first].rstrip()]
    for line in lines[first + 1 :]:
        if not line.strip() or line.startswith("=") or line.startswith("forgetting: wrote"):
            break
        out.append(line.rstrip())
    return "\n".join(out)


def failure(test: str) -> Callable[[str], str]:
    """The failure section of one test: what pytest prints under its ____ title."""

    def extract(text: str) -> str:
        lines = text.splitlines()
        title = next(i for i, line in enumerate(lines) if re.fullmatch(rf"_+ {re.escape(test)} _+", line))
        body = []
        for line in lines[title + 1 :]:
            if line.startswith("____") or line.startswith("===="):
                break
            body.append(line.rstrip())
        return "\n".join(body).strip("\n")

    return extract


def failure_line(test: str, prefix: str) -> Callable[[str], str]:
    def extract(text: str) -> str:
        return next(line.rstrip() for line in failure(test)(text).splitlines() if line.lstrip().startswith(prefix))

    return extract


def list_tasks(text: str) -> str:
    return _section(text, "forgetting: ", lambda line: not line.strip())


@dataclass(frozen=True)
class Output:
    command: tuple[str, ...]
    extract: Callable[[str], str]
    cheap: bool
    inputs: tuple[str, ...] = field(default=())
    expect_rc: tuple[int, ...] = (0,)

    @property
    def command_line(self) -> str:
        return " ".join(self.command)


PREMERGE = ("bash", "scripts/premerge.sh")
CANDIDATES = (
    PY,
    "-m",
    "pytest",
    "example_project",
    "-p",
    "no:cacheprovider",
    "--base-ckpt=example_project/checkpoints/base.safetensors",
    "--tuned-ckpt=example_project/checkpoints/tuned.safetensors",
    "--tuned-ckpt=example_project/checkpoints/replay.safetensors",
    "--tuned-ckpt=example_project/checkpoints/lora",
)

OUTPUTS: dict[str, Output] = {
    "list-tasks": Output(
        (PY, "-m", "pytest", "-p", "no:cacheprovider", "--forgetting-list-tasks"), list_tasks, cheap=True
    ),
    "premerge": Output(PREMERGE, summary_table, cheap=False, inputs=tuple(EXAMPLE_INPUTS), expect_rc=(1,)),
    "premerge-failure": Output(
        PREMERGE, failure("test_keeps_mnist_accuracy"), cheap=False, inputs=tuple(EXAMPLE_INPUTS), expect_rc=(1,)
    ),
    "premerge-weights": Output(
        PREMERGE,
        failure_line("test_keeps_mnist_accuracy", "weights:"),
        cheap=False,
        inputs=tuple(EXAMPLE_INPUTS),
        expect_rc=(1,),
    ),
    "candidates": Output(CANDIDATES, summary_table, cheap=False, inputs=tuple(EXAMPLE_INPUTS), expect_rc=(1,)),
}


def inputs_hash(output: Output) -> str:
    digest = hashlib.sha256()
    for rel in output.inputs:
        digest.update(rel.encode() + b"\0" + (ROOT / rel).read_bytes() + b"\0")
    return digest.hexdigest()


def body_hash(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def env_line() -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(ENV.items()))


_RUNS: dict[tuple[str, ...], str] = {}


def run(output: Output) -> str:
    """The command's stdout+stderr (one run per command, shared by the outputs cut from it)."""
    if output.command not in _RUNS:
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, **ENV, "FORGETTING_CACHE_DIR": cache}
            proc = subprocess.run(output.command, cwd=ROOT, env=env, capture_output=True, text=True)
        text = proc.stdout + proc.stderr
        if proc.returncode not in output.expect_rc:
            raise SystemExit(
                f"{output.command_line} exited {proc.returncode} (expected {output.expect_rc}):\n{text[-4000:]}"
            )
        _RUNS[output.command] = text
    return _RUNS[output.command]


def generate(name: str) -> str:
    output = OUTPUTS[name]
    return output.extract(run(output))


def render_file(name: str, body: str) -> str:
    output = OUTPUTS[name]
    return (
        f"# generated by scripts/readme_outputs.py {name}: do not edit, rerun the script\n"
        f"# command: {output.command_line}\n"
        f"# env: {env_line()}\n"
        f"# inputs-sha256: {inputs_hash(output)}\n"
        f"# output-sha256: {body_hash(body)}\n"
        f"{body}\n"
    )


def parse_file(text: str) -> tuple[dict[str, str], str]:
    """(header fields, body) of a docs/readme-outputs/NAME.txt file."""
    lines = text.split("\n")
    header: dict[str, str] = {}
    i = 0
    while i < len(lines) and lines[i].startswith("# "):
        key, _, value = lines[i][2:].partition(": ")
        header[key] = value
        i += 1
    return header, "\n".join(lines[i:]).rstrip("\n")


BLOCK = re.compile(
    r"(<!-- readme-output: (?P<name>[\w-]+) -->\n```[^\n]*\n)(?P<body>.*?)(\n```\n<!-- /readme-output -->)", re.S
)


def readme_blocks(text: str) -> dict[str, str]:
    return {m["name"]: m["body"] for m in BLOCK.finditer(text)}


def rewrite_readme(bodies: dict[str, str]) -> None:
    text = README.read_text()  # read right before writing: other people edit the README too
    before = text.count("\n")
    new = BLOCK.sub(lambda m: m.group(1) + bodies.get(m["name"], m["body"]) + m.group(4), text)
    if abs(new.count("\n") - before) > 200 or len(new) < len(text) // 2:
        raise SystemExit("refusing to rewrite README.md: the result differs too much")
    if new != text:
        README.write_text(new)


def main(argv: list[str]) -> int:
    if argv == ["--list"]:
        for name, output in OUTPUTS.items():
            print(f"{name:18} {'cheap' if output.cheap else 'expensive':9} {output.command_line}")
        return 0
    names = argv or list(OUTPUTS)
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        print(f"unknown output(s) {unknown}; known: {list(OUTPUTS)}", file=sys.stderr)
        return 2
    missing = [n for n in names if n not in readme_blocks(README.read_text())]
    if missing:
        print(f"README.md has no <!-- readme-output: NAME --> block for {missing}", file=sys.stderr)
        return 2
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    bodies = {}
    for name in names:
        bodies[name] = generate(name)
        (OUT_DIR / f"{name}.txt").write_text(render_file(name, bodies[name]))
        print(f"readme_outputs: {name}: {len(bodies[name].splitlines())} lines -> docs/readme-outputs/{name}.txt")
    rewrite_readme(bodies)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
