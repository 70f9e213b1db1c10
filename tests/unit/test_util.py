"""pytest_forgetting._util (suggest, atomic_write) and the generic registry; no torch."""

from __future__ import annotations

import ast
import os
import stat
import sys
from pathlib import Path

import pytest

from pytest_forgetting import _util
from pytest_forgetting._util import atomic_write, close_matches, create_temp, suggest
from pytest_forgetting.errors import ConfigError, TaskError
from pytest_forgetting.registry import REGISTRY, Registry

PACKAGE = Path(_util.__file__).parent
posix_only = pytest.mark.skipif(os.name != "posix", reason="permissions and O_NOFOLLOW are POSIX")


# -- did you mean ---------------------------------------------------------------------------------


def test_suggest_and_close_matches():
    assert suggest("accuarcy", ["accuracy", "f1_macro"]) == " (did you mean 'accuracy'?)"
    assert suggest("zzz", ["accuracy"]) == ""
    assert suggest("a", ()) == ""
    assert close_matches("retian", ("retains", "improves"), n=1, cutoff=0.8) == []  # the marker rule's cutoff
    assert close_matches("retainss", ("retains", "improves"), n=1, cutoff=0.8) == ["retains"]
    # ties: difflib orders them by name, descending
    assert close_matches("lodd", ["load", "loads", "lord", "x"], n=3) == ["lord", "load", "loads"]


def test_suggest_is_the_same_function_everywhere():
    from pytest_forgetting import registry
    from pytest_forgetting.tasks import base, loaders

    assert registry.suggest is base.suggest is loaders.suggest is suggest


def _imports(path: Path) -> set[str]:
    """Every module a file imports, top level or inside functions (relative names resolved)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            out.add(module)
            out |= {f"{module}.{a.name}" for a in node.names}
    return out


def test_registry_and_task_base_do_not_import_each_other():
    assert "pytest_forgetting.registry" not in _imports(PACKAGE / "tasks" / "base.py")
    assert "pytest_forgetting._util" in _imports(PACKAGE / "tasks" / "base.py")
    assert _imports(PACKAGE / "_util.py") <= {
        "__future__",
        "__future__.annotations",
        "os",
        "secrets",
        "difflib",
        "typing",
        "typing.IO",
        "typing.Any",
        "typing.Callable",
        "typing.Sequence",
        "typing.Union",
    }


# -- atomic_write ---------------------------------------------------------------------------------


def _listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_atomic_write_bytes_text_and_writer(tmp_path):
    path = tmp_path / "sub" / "deeper" / "out.bin"
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    atomic_write(path, "é\n")
    assert path.read_bytes() == "é\n".encode()
    atomic_write(str(path), lambda fh: fh.write(b"from a writer"), fsync=True)
    assert path.read_bytes() == b"from a writer"
    atomic_write(path, lambda name: Path(name).write_bytes(b"by name"), by_name=True)
    assert path.read_bytes() == b"by name"
    assert _listing(path.parent) == ["out.bin"]


def test_atomic_write_failure_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    path.write_text("old")

    def broken(fh):
        fh.write(b"half")
        raise RuntimeError("writer broke")

    with pytest.raises(RuntimeError, match="writer broke"):
        atomic_write(path, broken)
    assert path.read_text() == "old" and _listing(tmp_path) == ["out.json"]
    with pytest.raises(RuntimeError, match="by name"):
        atomic_write(
            path,
            lambda name: (Path(name).write_text("x"), (_ for _ in ()).throw(RuntimeError("by name"))),
            by_name=True,
        )
    assert path.read_text() == "old" and _listing(tmp_path) == ["out.json"]

    def no_replace(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, b"new")
    assert path.read_text() == "old" and _listing(tmp_path) == ["out.json"]


def test_atomic_write_without_makedirs_needs_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "gone" / "x.json", "{}", makedirs=False)
    assert not (tmp_path / "gone").exists()
    with pytest.raises(ValueError, match="by_name"):
        atomic_write(tmp_path / "x", b"bytes are not a writer", by_name=True)


@posix_only
def test_atomic_write_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "private", b"x")  # like mkstemp: 0600
        atomic_write(tmp_path / "report", b"x", chmod=0o644)  # whatever the umask
        atomic_write(tmp_path / "umask", b"x", perm=0o666)  # like a plain open: 0666 less the umask
        atomic_write(tmp_path / "named", lambda n: Path(n).write_bytes(b"x"), by_name=True, chmod=0o640)
        os.umask(0o077)
        atomic_write(tmp_path / "report2", b"x", chmod=0o644)
        atomic_write(tmp_path / "umask2", b"x", perm=0o666)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {
        "private": 0o600,
        "report": 0o644,
        "umask": 0o644,
        "named": 0o640,
        "report2": 0o644,
        "umask2": 0o600,
    }


@posix_only
def test_atomic_write_replaces_a_planted_link_and_never_writes_through_it(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "out.json"
    link.symlink_to(victim)
    atomic_write(link, "{}")
    assert victim.read_text() == "precious"
    assert not link.is_symlink() and link.read_text() == "{}"


@posix_only
def test_create_temp_refuses_a_planted_name_and_draws_another(tmp_path, monkeypatch):
    import secrets

    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / ".x.0000000000000000.tmp").symlink_to(victim)
    draws = iter(["0000000000000000", "1111111111111111"])
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(draws))
    name, fd = create_temp(tmp_path, "x")
    os.write(fd, b"mine")
    os.close(fd)
    assert name == ".x.1111111111111111.tmp" and victim.read_text() == "precious"
    assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600 & ~_current_umask()


def _current_umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


@pytest.mark.skipif(not (hasattr(os, "O_DIRECTORY") and os.open in os.supports_dir_fd), reason="needs dir_fd")
def test_atomic_write_relative_to_a_folder_descriptor(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        atomic_write("entry.npz", b"data", dir_fd=fd, chmod=0o640)
        with pytest.raises(RuntimeError):
            atomic_write("entry.npz", lambda fh: (_ for _ in ()).throw(RuntimeError("x")), dir_fd=fd)
        with pytest.raises(ValueError):
            atomic_write("entry.npz", lambda n: None, dir_fd=fd, by_name=True)
    finally:
        os.close(fd)
    assert _listing(folder) == ["entry.npz"] and (folder / "entry.npz").read_bytes() == b"data"
    if os.name == "posix":
        assert stat.S_IMODE((folder / "entry.npz").stat().st_mode) == 0o640


# -- the registry ---------------------------------------------------------------------------------


def test_generic_registry_builds_once_and_suggests():
    calls = []
    reg: Registry[list[int]] = Registry("widget")
    reg.register("alpha", lambda: [0], origin="here")
    reg.register("alpha", lambda: calls.append(1) or [1], origin="here")  # the same origin again: replaced
    assert reg.names() == ["alpha"] and "alpha" in reg and "beta" not in reg
    assert reg.get("alpha") == [1] and reg.get("alpha") is reg.get("alpha") and calls == [1]  # built once
    with pytest.raises(ConfigError, match=r"unknown widget 'alpah' \(did you mean 'alpha'\?\); known widgets: alpha"):
        reg.get("alpah")
    with pytest.raises(ConfigError, match="widget 'alpha' is registered twice: by here and by there"):
        reg.register("alpha", list, origin="there")
    with pytest.raises(ConfigError, match="widget name must be a non-empty string"):
        reg.register("", list, origin="here")
    reg.register("broken", lambda: 1 / 0, origin="there")
    with pytest.raises(TaskError, match=r"widget 'broken' could not be built \(there\): ZeroDivisionError"):
        reg.get("broken")
    reg.register("lazy", "os.path:sep", origin="there")  # a lazy "module:attr" whose attribute is the factory
    with pytest.raises(TaskError, match="could not be built"):
        reg.get("lazy")  # os.path.sep is a string, not callable
    reg.unregister("lazy")
    reg.unregister("never-there")
    assert reg.names() == ["alpha", "broken"]


def test_temporary_registration_restores_the_registry():
    before = dict(REGISTRY.entries)
    with REGISTRY.temporary("util-temp", lambda: None, origin="test_util") as name:
        assert name == "util-temp" and "util-temp" in REGISTRY.names()
        with pytest.raises(ConfigError, match="registered twice"):
            REGISTRY.register("util-temp", lambda: None, origin="someone else")
    assert REGISTRY.entries == before
    mnist = REGISTRY.entries["mnist"]
    with REGISTRY.temporary("mnist", lambda: None, origin="test_util"):  # shadows a built-in for the block
        assert REGISTRY.entries["mnist"].origin == "test_util"
    assert REGISTRY.entries["mnist"] is mnist
    with pytest.raises(RuntimeError):
        with REGISTRY.temporary("util-temp", lambda: None):
            raise RuntimeError("the test failed")
    with pytest.raises(ConfigError):
        with REGISTRY.temporary("", lambda: None):
            pass  # pragma: no cover
    assert REGISTRY.entries == before


def test_task_registry_checks_what_a_factory_returns():
    with REGISTRY.temporary("util-not-a-task", lambda: object(), origin="test_util"):
        with pytest.raises(
            TaskError,
            match=r"task factory 'util-not-a-task' \(test_util\) returned object, "
            "not a pytest_forgetting Task",
        ):
            REGISTRY.get("util-not-a-task")


def test_the_pf_task_decorator_registers_under_the_module_and_name():
    import pytest_forgetting as pf

    try:

        @pf.task("util-decorated")
        def factory():  # pragma: no cover - not built
            raise AssertionError

        assert REGISTRY.entries["util-decorated"].origin.endswith(
            "test_util.test_the_pf_task_decorator_registers_under_the_module_and_name.<locals>.factory"
        )
    finally:
        REGISTRY.unregister("util-decorated")


def test_util_imports_no_torch():
    import subprocess

    code = "import pytest_forgetting._util, pytest_forgetting.registry, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
