"""The cache folder under attack from the file system: links, foreign owners, read-only, full, bombs.

Planted symbolic links (at an entry, a lock file, the digest store or its temporary names, the
folder itself or a folder above it inside the checkout) must never make a run write outside the
cache: each victim file's bytes and mtime are checked. A folder that cannot be used safely gives
one warning and the run goes on uncached with the same verdicts; an entry that would inflate to
gigabytes is refused before it is inflated, under a memory limit and a timeout. Every project has
two checks (one FAILs, one PASSes) and an unrelated test.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import stat
import struct
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from _cache_helpers import (
    HONEST,
    PEAK_HOOK,
    args,
    assert_honest,
    base_cached,
    entries,
    forged_entry,
    make_victim,
    read_entry,
    run,
    run_subprocess,
    setup,
    snapshot,
    verdicts,
    warning_count,
    write_entry,
)

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file system semantics")
pytestmark = posix_only


# -- symbolic links -------------------------------------------------------------------------------
def test_symlinked_entry_is_neither_read_nor_written_through(make_project, tmp_path):
    p, tuned = setup(make_project)
    name, forged = forged_entry(p, tuned, tmp_path)
    cache = tmp_path / "cache"
    run(p, tuned, cache)
    outside = tmp_path / "outside.npz"  # a potent forgery outside the cache, linked in as the base entry
    write_entry(outside, forged)
    before = snapshot(outside)
    (cache / name).unlink()
    (cache / name).symlink_to(outside)
    result, rows = run(p, tuned, cache)
    assert_honest(result, rows)  # not read through the link
    assert not base_cached(rows) and warning_count(result) == 0
    assert snapshot(outside) == before  # not written through it either: the link itself was replaced
    assert not (cache / name).is_symlink() and read_entry(cache / name)["__key__"] == forged["__key__"]


def test_symlinked_lock_file_is_refused_with_one_warning(make_project, tmp_path):
    p, tuned = setup(make_project)
    cache = tmp_path / "cache"
    run(p, tuned, cache)
    (entry,) = entries(cache)
    lock = cache / f".{entry.stem}.lock"
    entry.unlink()
    if lock.exists():
        lock.unlink()
    victim = tmp_path / "victim.txt"
    before = make_victim(victim)
    lock.symlink_to(victim)  # filelock < 3.20.1 truncated the target of a symlinked lock file
    result, rows = run(p, tuned, cache)
    assert_honest(result, rows)
    assert warning_count(result) == 1
    result.stdout.fnmatch_lines(
        [
            f"*cache folder {cache} holds a lock file .{entry.stem}.lock that is a symbolic link*running without the cache*"
        ]
    )
    assert snapshot(victim) == before
    assert not entries(cache)  # uncached: nothing stored after the refusal


def test_planted_digest_store_and_temporary_names_are_not_followed(make_project, tmp_path, monkeypatch):
    """The digest store used to be written through ``.file-digests.json.<pid>.tmp`` (a name anyone can
    predict) with ``Path.write_text``; now ``mkstemp`` (random name, O_EXCL | O_NOFOLLOW) and a rename."""
    from pytest_forgetting.checkpoints import FileDigests

    monkeypatch.setattr(FileDigests, "RACY_NS", -(10**12))  # remember fresh files: the store is written now
    p, tuned = setup(make_project)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    victims = []
    for i, name in enumerate([f".file-digests.json.{os.getpid()}.tmp", "file-digests.json"]):
        victim = tmp_path / f"victim{i}.txt"
        victims.append((victim, make_victim(victim, '{"planted": "x"}\n')))
        (cache / name).symlink_to(victim)
    result, rows = run(p, tuned, cache)
    assert_honest(result, rows)
    assert warning_count(result) == 0
    for victim, before in victims:
        assert snapshot(victim) == before
    store = cache / "file-digests.json"
    assert store.is_file() and not store.is_symlink() and len(json_load(store)) >= 2
    assert not [
        f for f in cache.iterdir() if f.name.endswith(".tmp") and not f.is_symlink()
    ]  # no temporary left behind


def json_load(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


@pytest.mark.parametrize("where", ["folder", "parent-in-checkout"])
def test_symlinked_cache_folder_is_refused_with_one_warning(make_project, tmp_path, where):
    p, tuned = setup(make_project)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / "file-digests.json"
    before = make_victim(victim, "{}\n")
    if where == "folder":
        cache = tmp_path / "cache-link"
        cache.symlink_to(elsewhere, target_is_directory=True)
        expected = f"*cache folder {cache} is a symbolic link*running without the cache*"
    else:  # a folder of the checkout that the pull request made a link: <rootdir>/build -> elsewhere
        (p.path / "build").symlink_to(elsewhere, target_is_directory=True)
        cache = p.path / "build" / "cache"
        expected = f"*cache folder {cache} is reached through the symbolic link {p.path / 'build'} inside the rootdir*"
    result, rows = run(p, tuned, cache)
    assert_honest(result, rows)
    assert not base_cached(rows)
    assert warning_count(result) == 1
    result.stdout.fnmatch_lines([expected])
    assert sorted(f.name for f in elsewhere.iterdir()) == ["file-digests.json"] and snapshot(victim) == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another user needs root")
def test_cache_folder_owned_by_another_user_is_refused(make_project, tmp_path):
    p, tuned = setup(make_project)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    os.chown(cache, 65534, 65534)
    result, rows = run(p, tuned, cache)
    assert_honest(result, rows)
    assert warning_count(result) == 1
    result.stdout.fnmatch_lines([f"*cache folder {cache} is owned by another user (uid 65534, refused)*"])
    assert list(cache.iterdir()) == []


def test_world_writable_cache_folder_is_refused(make_project, tmp_path):
    p, tuned = setup(make_project)
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    result, rows = run(p, tuned, cache)
    assert_honest(result, rows)
    assert warning_count(result) == 1
    result.stdout.fnmatch_lines([f"*cache folder {cache} is writable by every user (refused)*"])
    assert list(cache.iterdir()) == []


# -- unusable folders: one warning, the same verdicts ---------------------------------------------
def test_cache_path_that_is_a_file_gives_one_warning(make_project, tmp_path):
    p, tuned = setup(make_project)
    cache = tmp_path / "not-a-folder"
    before = make_victim(cache, "a file where the cache folder should be\n")
    result, rows = run(p, tuned, cache)
    assert_honest(result, rows)
    assert warning_count(result) == 1
    result.stdout.fnmatch_lines([f"*cache folder {cache} is not a folder; running without the cache*"])
    assert snapshot(cache) == before
    # under a file: the folder cannot even be created
    result, rows = run(p, tuned, cache / "sub")
    assert_honest(result, rows)
    assert warning_count(result) == 1 and "cannot be used" in result.stdout.str()


def _unprivileged_prefix() -> list[str] | None:
    """How to run a child that file permissions apply to: as a normal user nothing; as root without
    CAP_DAC_OVERRIDE (setpriv); None when neither is possible."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--bounding-set=-dac_override", "--"] if setpriv else None


def test_read_only_cache_folder_gives_one_warning(make_project, tmp_path):
    prefix = _unprivileged_prefix()
    if prefix is None:
        pytest.skip("running as root without setpriv: a read-only folder is writable")
    p, tuned = setup(make_project)
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o555)
    try:
        proc, rows = run_subprocess(p, args(p, tuned, cache), timeout=300, prefix=prefix)
    finally:
        cache.chmod(0o755)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out  # one test failed: the honest FAIL
    assert verdicts(rows) == HONEST and "1 failed, 2 passed" in out
    assert out.count("pytest-forgetting: cache folder") == 1
    assert f"cache folder {cache} is not writable (Permission denied); running without the cache" in out
    assert list(cache.iterdir()) == []


def _fsize_limit(limit: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE")
def test_full_cache_gives_one_warning(make_project, tmp_path):
    """A cache that fills up while an entry is written (simulated with RLIMIT_FSIZE)."""
    p, tuned = setup(make_project)
    cache = tmp_path / "cache"
    argv = [a for a in args(p, tuned, cache) if not a.startswith("--forgetting-json")]  # a report would not fit either
    proc, _ = run_subprocess(p, argv, timeout=300, preexec=_fsize_limit(4096))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "1 failed, 2 passed" in out, out
    assert "synth/test accuracy dropped 20.0 pp" in out
    assert out.count("pytest-forgetting: cache folder") == 1
    assert f"cache folder {cache} cannot be written (File too large); running without the cache" in out
    assert not entries(cache) and not [f for f in cache.iterdir() if f.name.endswith(".tmp")]


# -- decompression bomb ---------------------------------------------------------------------------
def _bomb_member(uncompressed: int) -> tuple[bytes, int, int]:
    """(raw deflate stream, crc32, size) of a .npy of ``uncompressed`` zero bytes (computed once, ~1000:1)."""
    header = b"\x93NUMPY\x01\x00"
    text = ("{'descr': '|u1', 'fortran_order': False, 'shape': (%d,), }" % (uncompressed,)).encode()
    text += b" " * (63 - (len(header) + 2 + len(text)) % 64) + b"\n"
    head = header + struct.pack("<H", len(text)) + text
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = [comp.compress(head)]
    crc = zlib.crc32(head)
    chunk = bytes(1 << 24)
    for _ in range(uncompressed // len(chunk)):
        out.append(comp.compress(chunk))
        crc = zlib.crc32(chunk, crc)
    out.append(comp.flush())
    return b"".join(out), crc & 0xFFFFFFFF, len(head) + uncompressed


def _write_zip(path: Path, stored: dict[str, bytes], deflated: list[tuple[str, bytes, int, int]]) -> None:
    """A zip by hand: ``stored`` members as they are, ``deflated`` ones from precomputed streams."""
    with open(path, "wb") as fh:
        central = []
        for name, data in stored.items():
            central.append((name.encode(), 0, zlib.crc32(data) & 0xFFFFFFFF, len(data), len(data), fh.tell()))
            fh.write(
                struct.pack(
                    "<IHHHHHIIIHH",
                    0x04034B50,
                    20,
                    0,
                    0,
                    0,
                    0x21,
                    central[-1][2],
                    len(data),
                    len(data),
                    len(central[-1][0]),
                    0,
                )
            )
            fh.write(central[-1][0] + data)
        for name, stream, crc, size in deflated:
            central.append((name.encode(), 8, crc, len(stream), size, fh.tell()))
            fh.write(
                struct.pack(
                    "<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(stream), size, len(central[-1][0]), 0
                )
            )
            fh.write(central[-1][0] + stream)
        start = fh.tell()
        for name, method, crc, csize, usize, offset in central:
            fh.write(
                struct.pack(
                    "<IHHHHHHIIIHHHHHII",
                    0x02014B50,
                    20,
                    20,
                    0,
                    method,
                    0,
                    0x21,
                    crc,
                    csize,
                    usize,
                    len(name),
                    0,
                    0,
                    0,
                    0,
                    0,
                    offset,
                )
            )
            fh.write(name)
        size = fh.tell() - start
        fh.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), size, start, 0))


@pytest.fixture(scope="module")
def bomb_stream(tmp_path_factory):
    return _bomb_member(256 * 2**20)


def _bomb_entry(entry: Path, bomb_stream, members: int = 32) -> None:
    """The honest entry (its real key) plus ``members`` x 256 MiB of zeros: 8 MiB that inflate to 8 GiB."""
    with zipfile.ZipFile(entry) as zf:
        stored = {i.filename: zf.read(i) for i in zf.infolist()}
    stream, crc, size = bomb_stream
    _write_zip(entry, stored, [(f"pad{i}.npy", stream, crc, size) for i in range(members)])


def test_bomb_fixture_is_a_valid_zip_that_inflates_to_gigabytes(tmp_path, bomb_stream):
    entry = tmp_path / "e.npz"
    write_entry(entry, {"__ids__": np.array(["a"])})
    _bomb_entry(entry, bomb_stream)
    with zipfile.ZipFile(entry) as zf:
        declared = sum(i.file_size for i in zf.infolist())
        with zf.open("pad0.npy") as m:
            assert np.lib.format.read_magic(m) == (1, 0)
            assert np.lib.format.read_array_header_1_0(m)[0] == (256 * 2**20,)
            assert m.read(1 << 20) == bytes(1 << 20)
    assert entry.stat().st_size < 12 * 2**20 and declared > 8 * 2**30


AS_LIMIT = 3 * 2**30


def _memory_limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS and ru_maxrss in KiB: Linux")
def test_inflating_entry_is_refused_before_it_is_inflated(make_project, tmp_path, bomb_stream):
    p, tuned = setup(make_project)
    (p.path / "conftest.py").write_text((p.path / "conftest.py").read_text() + PEAK_HOOK)
    cache = tmp_path / "cache"
    run(p, tuned, cache)
    (entry,) = entries(cache)
    _bomb_entry(entry, bomb_stream)
    assert entry.stat().st_size < 12 * 2**20
    proc, rows = run_subprocess(p, args(p, tuned, cache), timeout=300, preexec=_memory_limit)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "1 failed, 2 passed" in out, out[-3000:]
    assert verdicts(rows) == HONEST and not base_cached(rows)
    assert "MemoryError" not in out and out.count("pytest-forgetting: cache folder") == 0
    peak_kb = int(out.split("PEAK_RSS_KB", 1)[1].split()[0])
    assert peak_kb < 1_200_000, f"peak RSS {peak_kb} KiB: the entry was inflated"
    assert entry.stat().st_size < 2**20  # replaced by the honest entry


def test_prepared_entries_follow_the_same_rules(tmp_path, bomb_stream):
    """Tokenised-input entries: key recorded and verified, size-capped, links not followed."""
    from pytest_forgetting.cache import EvalCache

    cache = EvalCache(tmp_path / "c")
    tree = {"input_ids": np.arange(12).reshape(3, 4), "mask": np.ones((3, 4), dtype=bool)}
    key = {"kind": "prepared", "task": "t", "data": "d1"}
    assert cache.store_prepared(key, tree)
    (entry,) = (tmp_path / "c").glob("prepared-*.npz")
    assert cache.load_prepared(key, n_examples=3)["input_ids"].tolist() == tree["input_ids"].tolist()
    assert cache.load_prepared({**key, "data": "d2"}, n_examples=3) is None  # another key: another name
    other = EvalCache(tmp_path / "c2")
    other.store_prepared({**key, "data": "d2"}, tree)
    (foreign,) = (tmp_path / "c2").glob("prepared-*.npz")
    shutil.copyfile(foreign, entry)  # the right name, another key recorded: a miss
    assert cache.load_prepared(key, n_examples=3) is None
    cache.store_prepared(key, tree)
    outside = tmp_path / "outside.npz"
    shutil.copyfile(entry, outside)
    entry.unlink()
    entry.symlink_to(outside)
    assert cache.load_prepared(key, n_examples=3) is None
    before = snapshot(outside)
    cache.store_prepared(key, tree)
    assert snapshot(outside) == before and not entry.is_symlink()
    _bomb_entry(entry, bomb_stream, members=4)  # 1 GiB declared for 3 examples
    assert cache.load_prepared(key, n_examples=3) is None


def test_offload_folder_is_private_and_never_behind_a_link(tmp_path):
    from pytest_forgetting.cache import EvalCache
    from pytest_forgetting.session import _offload_dir

    cache = EvalCache(tmp_path / "c")
    folder = Path(_offload_dir(cache))
    assert folder.parent == tmp_path / "c" / "offload" and stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "c" / "offload").stat().st_mode) == 0o700
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cache2 = EvalCache(tmp_path / "c2")
    assert cache2.usable()
    (tmp_path / "c2" / "offload").symlink_to(elsewhere, target_is_directory=True)
    folder2 = Path(_offload_dir(cache2))
    assert elsewhere not in folder2.parents and list(elsewhere.iterdir()) == []
    assert stat.S_IMODE(folder2.stat().st_mode) == 0o700
    refused = EvalCache(tmp_path / "link")
    (tmp_path / "link").symlink_to(elsewhere, target_is_directory=True)
    with pytest.warns(UserWarning, match="is a symbolic link"):
        folder3 = Path(_offload_dir(refused))
    assert elsewhere not in folder3.parents and list(elsewhere.iterdir()) == []


def test_one_warning_under_xdist(make_project, tmp_path):
    """Every worker finds the folder unusable; the run still shows the warning once."""
    pytest.importorskip("xdist")
    p, tuned = setup(make_project)
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    proc, rows = run_subprocess(p, args(p, tuned, cache, "-n", "2"), timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "1 failed, 2 passed" in out, out[-3000:]
    assert verdicts(rows) == HONEST
    assert out.count("pytest-forgetting: cache folder") == 1, out[-3000:]


# -- where the cache lives ------------------------------------------------------------------------
def test_default_cache_folder_is_the_platform_user_cache_folder(tmp_path):
    from pytest_forgetting.options import default_cache_dir

    home = str(tmp_path / "home")
    assert (
        default_cache_dir({"HOME": home, "XDG_CACHE_HOME": str(tmp_path / "xdg")}, "linux")
        == tmp_path / "xdg" / "pytest-forgetting"
    )
    assert default_cache_dir({"HOME": home, "XDG_CACHE_HOME": "relative/xdg"}, "linux") == Path(
        home, ".cache", "pytest-forgetting"
    )
    assert default_cache_dir({"HOME": home}, "linux") == Path(home, ".cache", "pytest-forgetting")
    assert default_cache_dir({"HOME": home}, "darwin") == Path(home, "Library", "Caches", "pytest-forgetting")
    assert (
        default_cache_dir({"USERPROFILE": home, "LOCALAPPDATA": str(tmp_path / "local")}, "win32")
        == tmp_path / "local" / "pytest-forgetting"
    )


def test_cache_folder_from_env_and_ini_never_the_rootdir_by_default(make_project, tmp_path, monkeypatch):
    p, tuned = setup(make_project)
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    p.pytester.makeini("[pytest]\nforgetting_cache_dir = ini-cache\n")
    monkeypatch.setenv("FORGETTING_CACHE_DIR", str(tmp_path / "env-cache"))
    result, rows = run(p, tuned, None)  # env > ini
    assert_honest(result, rows)
    assert entries(tmp_path / "env-cache") and not (p.path / "ini-cache").exists()
    monkeypatch.delenv("FORGETTING_CACHE_DIR")
    result, rows = run(p, tuned, None)  # ini (an untracked folder of the rootdir: allowed)
    assert_honest(result, rows)
    assert entries(p.path / "ini-cache") and warning_count(result) == 0
    (p.path / "tox.ini").unlink()
    result, rows = run(p, tuned, None)  # default: the user cache folder, nothing in the rootdir
    assert_honest(result, rows)
    assert entries(xdg / "pytest-forgetting")
    assert not [f for f in p.path.rglob("*.npz") if "ini-cache" not in f.parts]


def test_unusable_folder_under_warnings_as_errors_still_runs_uncached(make_project, tmp_path):
    """``-W error`` (or ``filterwarnings = error``) must not turn the one warning into an ERROR of every check."""
    p, tuned = setup(make_project)
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    result, rows = run(p, tuned, cache, "-W", "error::UserWarning")
    assert_honest(result, rows)
    assert warning_count(result) == 1  # on stderr instead
