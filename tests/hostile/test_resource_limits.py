"""Resource attacks: small files that used to exhaust memory, hang, or kill the run with a signal.

Each attack runs the real CLI in a child process under a memory limit (RLIMIT_AS) and a timeout, so
an attack that still allocated a 7B model or hung would end the test with a kill or a timeout instead
of taking the suite down. The run must end the ordinary way: pytest's exit status, its summary line,
every check of the candidate ERROR with the same one line saying what to do, the unrelated test
passing, nothing written outside the cache, no planted secret in any output.

The children are forked from one helper process that imported torch and transformers once, so an
attack costs its own work, not an import of torch (seconds on a loaded CI machine).
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _checkpoint_helpers import (
    SECRET,
    SECRET_ENV,
    SYNTH_CHECKS,
    TEXT_CHECKS,
    TEXT_CONFTEST,
    Outcome,
    assert_safe,
    assert_safe_and_clear,
    dedent,
    plant_secret,
    report_args,
    tree,
)

pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="forks a process with torch imported and uses /proc (Linux)"
)

#: address-space limit of every attacked run; importing torch + transformers maps ~1 GiB (measured
#: VmPeak 0.94 GiB with peft and gguf), a tiny model evaluation adds little: 3 GiB leaves room for
#: the run and none for a 7B model (26 GiB in float32) or a rank-2,000,000 adapter
MEMORY_LIMIT = 3 << 30
TIMEOUT_S = 90

ZYGOTE = r"""
import json, os, resource, signal, sys, time, traceback
sys.dont_write_bytecode = True
import numpy, scipy.stats, torch, transformers, safetensors.torch  # the heavy imports, once
for name in ("peft", "gguf", "tokenizers"):
    try:
        __import__(name)
    except ImportError:
        pass
import importlib, pkgutil
import pytest
import pytest_forgetting, pytest_forgetting.tasks  # noqa: E401
# warm what a run imports lazily (every child would pay for it again): the plugin, the model classes
for info in [*pkgutil.iter_modules(pytest_forgetting.__path__, "pytest_forgetting."),
             *pkgutil.iter_modules(pytest_forgetting.tasks.__path__, "pytest_forgetting.tasks.")]:
    try:
        importlib.import_module(info.name)
    except Exception:
        pass
for name in ("BertForSequenceClassification", "LlamaForCausalLM", "AutoTokenizer", "PreTrainedTokenizerFast",
             "AutoConfig", "AutoModelForCausalLM", "BertTokenizerFast", "LlamaTokenizerFast"):
    getattr(transformers, name, None)
for module in ("transformers.modeling_gguf_pytorch_utils", "transformers.integrations.ggml", "peft.tuners.lora",
               "hypothesis", "filelock", "sklearn.metrics", "_pytest.pytester", "xdist", "anyio.pytest_plugin"):
    try:
        importlib.import_module(module)
    except Exception:
        pass
import gc
gc.freeze()  # the children's gc passes (pytest runs two at exit) skip this large, shared heap
print(json.dumps({"ready": True, "vm_kib": int(open("/proc/self/status").read().split("VmSize:")[1].split()[0])}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            os.chdir(req["cwd"])
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.environ.update(req["env"])
            import tempfile
            tempfile.tempdir = None
            sys.path.insert(0, req["cwd"])
            resource.setrlimit(resource.RLIMIT_AS, (req["memory"], req["memory"]))
            code = pytest.main(req["args"])
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(int(code))
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(99)
    deadline = time.monotonic() + req["timeout"]
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = None
            break
        time.sleep(0.02)
    if status is None:
        answer = {"timeout": True}
    elif os.WIFSIGNALED(status):
        answer = {"signal": os.WTERMSIG(status)}
    else:
        answer = {"exit": os.WEXITSTATUS(status)}
    print(json.dumps(answer), flush=True)
"""


class Zygote:
    """A process with torch imported that forks one limited child per run."""

    def __init__(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1", TOKENIZERS_PARALLELISM="false")
        env[SECRET_ENV] = SECRET  # what /proc/self/environ of every run holds
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        ready = json.loads(self.proc.stdout.readline() or "{}")  # type: ignore[union-attr]
        assert ready.get("ready"), "the helper process did not start"
        self.vm_kib = ready["vm_kib"]

    def run(self, root: Path, args: list[str], *, env: dict[str, str] | None = None) -> tuple[dict, Outcome]:
        log = root / "out" / "log.txt"
        log.parent.mkdir(exist_ok=True)
        tmp = root / "out" / "tmp"  # the run's TMPDIR: its private copies must be gone afterwards
        tmp.mkdir(exist_ok=True)
        before = tree(root)
        request = {"cwd": str(root), "log": str(log), "args": [*args, *report_args(root), "-rA"],
                   "env": {"TMPDIR": str(tmp), **(env or {})}, "memory": MEMORY_LIMIT, "timeout": TIMEOUT_S}  # fmt: skip
        self.proc.stdin.write(json.dumps(request) + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        answer = json.loads(self.proc.stdout.readline())  # type: ignore[union-attr]
        outcome = Outcome(root, log.read_text(errors="replace"), before)
        outcome.written = [k for k in outcome.written if not k.startswith("out/")]
        assert not any(tmp.iterdir()), sorted(tmp.iterdir())
        return answer, outcome

    def close(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    assert z.vm_kib < (MEMORY_LIMIT >> 10) * 0.7, f"the helper already maps {z.vm_kib} KiB; raise MEMORY_LIMIT"
    yield z
    z.close()


def summary(stdout: str) -> dict[str, int]:
    """pytest's final counts: {'passed': 1, 'errors': 2, ...}."""
    last = [ln for ln in stdout.splitlines() if re.match(r"^=+ .* in [\d.]+s", ln)]
    assert last, stdout[-3000:]
    return {kind if kind != "error" else "errors": int(n) for n, kind in re.findall(r"(\d+) (\w+)", last[-1])}


def ended_cleanly(answer: dict, outcome: Outcome, **counts: int) -> None:
    """The run ended with pytest's own exit status and summary, not a kill, a signal or a timeout."""
    assert "timeout" not in answer, f"timed out after {TIMEOUT_S} s: {outcome.stdout[-2000:]}"
    assert "signal" not in answer, f"killed by {signal.Signals(answer['signal']).name}: {outcome.stdout[-2000:]}"
    assert answer["exit"] in (0, 1), (answer, outcome.stdout[-3000:])
    got = summary(outcome.stdout)
    assert {k: got.get(k, 0) for k in counts} == counts, (got, outcome.stdout[-3000:])
    assert "test_unrelated PASSED" in outcome.stdout or "::test_unrelated" in outcome.stdout


def refused(zygote: Zygote, root: Path, args: list[str], needle: str, hint: str) -> str:
    answer, outcome = zygote.run(root, args)
    ended_cleanly(answer, outcome, errors=2, passed=1)
    return assert_safe_and_clear(outcome, needle, hint)


@pytest.fixture
def synth(make_project):
    """The tiny synthetic project: a factory base, two checks, an unrelated test, a planted secret."""
    p = make_project(n=400)
    p.test_file(SYNTH_CHECKS)
    plant_secret(p.path)
    return p


def synth_args(p, tuned: Path) -> list[str]:
    return [f"--base-ckpt={p.base}", f"--tuned-ckpt={tuned}", "--model-factory=tinymodels:build"]


# -- control -----------------------------------------------------------------------------------


def test_control_run_under_the_limit_passes(zygote, synth):
    answer, outcome = zygote.run(synth.path, synth_args(synth, synth.base))
    ended_cleanly(answer, outcome, passed=3)
    assert_safe(outcome)


def test_the_limit_is_real(zygote, synth):
    """Allocating 8 GiB under the limit fails (MemoryError -> a failed test), it is not ignored."""
    synth.pytester.makepyfile(test_big="def test_big():\n    bytearray(8 << 30)\n")
    answer, outcome = zygote.run(synth.path, ["test_big.py"])
    assert answer == {"exit": 1} and "MemoryError" in outcome.stdout


# -- GGUF --------------------------------------------------------------------------------------


def _gguf(path: Path, tensors: dict | None = None, **metadata) -> Path:
    import numpy as np

    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in metadata.items():
        getattr(writer, f"add_{key}")(value)
    for name, array in (tensors or {"token_embd.weight": np.zeros((4, 8), np.float32)}).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_tiny_gguf_without_size_metadata_is_not_built_at_llama_7b_size(zygote, synth):
    """transformers fills missing sizes with LlamaConfig's defaults: 6.6 billion parameters."""
    tuned = _gguf(synth.path / "tiny.gguf")
    assert tuned.stat().st_size < 600
    reason = refused(
        zygote, synth.path, synth_args(synth, tuned), "the config does not belong to these weights", "32 values"
    )
    assert "GGUF file" in reason


def test_gguf_asking_for_200_x_8192_layers_is_refused_before_building(zygote, synth):
    tuned = _gguf(synth.path / "deep.gguf", block_count=200 * 8192, embedding_length=8)
    refused(zygote, synth.path, synth_args(synth, tuned), "llama.block_count=1638400 is implausible", "limit 256")


def test_gguf_header_claiming_more_than_the_file_is_refused(zygote, synth):
    import struct

    tuned = synth.path / "liar.gguf"
    # version 3, 1 tensor, 1 metadata entry whose string claims 2**40 bytes
    tuned.write_bytes(
        b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + struct.pack("<Q", 4) + b"name" + struct.pack("<IQ", 8, 1 << 40)
    )
    refused(zygote, synth.path, synth_args(synth, tuned), "is not a valid GGUF file", "more than the file holds")


def test_gguf_tensor_claiming_a_trillion_elements_is_refused(zygote, synth):
    """A tensor table entry of 2**20 x 2**20 float32 in a tiny file: refused from the header, never read."""
    import numpy as np

    tuned = _gguf(synth.path / "huge.gguf", embedding_length=8)
    raw = bytearray(tuned.read_bytes())
    name = b"token_embd.weight"
    at = raw.index(name) + len(name)  # n_dims (u32), then the dims (u64 each): (8, 4) -> (2**20, 2**20)
    raw[at + 4 : at + 20] = np.array([1 << 20, 1 << 20], dtype="<u8").tobytes()
    tuned.write_bytes(bytes(raw))
    refused(zygote, synth.path, synth_args(synth, tuned), "lies outside the file", "token_embd.weight")


# -- PEFT adapters -----------------------------------------------------------------------------


@pytest.fixture
def text(pytester):
    import _helpers.checkpoint_models as tc

    pytester.makeconftest(TEXT_CONFTEST)
    pytester.makepyfile(test_contract=dedent(TEXT_CHECKS))
    base = pytester.path / "base"
    tc.save_bert(base)
    plant_secret(pytester.path)
    return pytester, base, tc


def test_peft_adapter_with_rank_2000000_is_refused_before_allocation(zygote, text):
    pytester, base, tc = text
    pytest.importorskip("peft")
    adapter = pytester.path / "adapter"
    tc.make_adapter(base, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["r"] = 2_000_000
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    reason = refused(zygote, pytester.path, [f"--base-ckpt={base}", f"--tuned-ckpt={adapter}"],
                     "does not fit the base model", "r, target_modules")  # fmt: skip
    assert "(2000000, 16)" in reason and "(2, 16)" in reason


def test_peft_adapter_targeting_more_modules_than_its_weights_is_refused(zygote, text):
    pytester, base, tc = text
    pytest.importorskip("peft")
    adapter = pytester.path / "adapter"
    tc.make_adapter(base, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["target_modules"] = ["query", "key", "value", "dense"]
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    refused(
        zygote,
        pytester.path,
        [f"--base-ckpt={base}", f"--tuned-ckpt={adapter}"],
        "missing",
        "does not fit the base model",
    )


# -- Hugging Face folders ----------------------------------------------------------------------


def test_8_mib_config_is_refused_before_reading(zygote, text):
    pytester, base, tc = text
    tuned = pytester.path / "tuned"
    tc.save_bert(tuned)
    config = json.loads((tuned / "config.json").read_text())
    config["id2label"] = {str(i): f"label-{i:07d}" for i in range(400_000)}  # ~8 MiB of labels
    (tuned / "config.json").write_text(json.dumps(config))
    assert (tuned / "config.json").stat().st_size > 8 << 20
    refused(zygote, pytester.path, [f"--base-ckpt={base}", f"--tuned-ckpt={tuned}"], "config.json", "4 MiB at most")


def test_config_with_a_huge_layer_count_is_refused(zygote, text):
    pytester, base, tc = text
    tuned = pytester.path / "tuned"
    tc.save_bert(tuned)
    config = json.loads((tuned / "config.json").read_text())
    config.update(num_hidden_layers=200 * 8192)
    (tuned / "config.json").write_text(json.dumps(config))
    refused(
        zygote,
        pytester.path,
        [f"--base-ckpt={base}", f"--tuned-ckpt={tuned}"],
        "num_hidden_layers=1638400",
        "implausible",
    )


def test_config_describing_a_7b_model_over_tiny_weights_is_refused(zygote, text):
    pytester, base, tc = text
    tuned = pytester.path / "tuned"
    tc.save_bert(tuned)
    config = json.loads((tuned / "config.json").read_text())
    config.update(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32000
    )
    (tuned / "config.json").write_text(json.dumps(config))
    refused(
        zygote,
        pytester.path,
        [f"--base-ckpt={base}", f"--tuned-ckpt={tuned}"],
        "does not belong to these weights",
        "hidden_size=4096",
    )


def test_config_linked_to_proc_pagemap_does_not_hang(zygote, text):
    pytester, base, tc = text
    tuned = pytester.path / "tuned"
    tc.save_bert(tuned)
    (tuned / "config.json").unlink()
    (tuned / "config.json").symlink_to("/proc/self/pagemap")
    refused(
        zygote, pytester.path, [f"--base-ckpt={base}", f"--tuned-ckpt={tuned}"], "leads into /proc", "replace the link"
    )


# -- weights rewritten while the run loads them --------------------------------------------------

REWRITER = '''
import os, threading, time

_stop = threading.Event()


def _rewrite(path, data):
    """Truncate and rewrite the weights in place, again and again (a concurrent writer)."""
    while not _stop.is_set():
        with open(path, "r+b") as fh:
            fh.truncate(0)
            fh.flush()
            time.sleep(0.0005)
            fh.write(data)
        time.sleep(0.0005)


def pytest_sessionstart(session):
    path = os.environ["REWRITE_WEIGHTS"]
    with open(path, "rb") as fh:
        data = fh.read()
    threading.Thread(target=_rewrite, args=(path, data), daemon=True).start()


def pytest_sessionfinish(session):
    _stop.set()
'''


def test_weights_rewritten_in_place_during_loading_never_kill_the_run(zygote, text):
    """The mapped-file SIGBUS: transformers memory-maps safetensors; a concurrent truncation killed the run."""
    pytester, base, tc = text
    tuned = pytester.path / "tuned"
    tc.save_bert(tuned, hidden_size=256, intermediate_size=1024, num_attention_heads=4, num_hidden_layers=4)  # ~16 MB
    (pytester.path / "rewriter.py").write_text(REWRITER)
    weights = tuned / "model.safetensors"
    outcomes = []
    for _ in range(3):
        answer, outcome = zygote.run(pytester.path, [f"--base-ckpt={base}", f"--tuned-ckpt={tuned}", "-p", "rewriter"],
                                     env={"REWRITE_WEIGHTS": str(weights)})  # fmt: skip
        assert "timeout" not in answer and "signal" not in answer, (answer, outcome.stdout[-2000:])
        assert answer["exit"] in (0, 1)
        counts = summary(outcome.stdout)
        assert counts.get("passed", 0) >= 1  # the unrelated test, at least
        outcome.written = [k for k in outcome.written if k != "tuned/model.safetensors"]  # the writer's own doing
        assert_safe(outcome)
        for row in outcome.rows():  # each check either evaluated a consistent copy or says what happened
            assert row["verdict"] != "error" or any(
                s in row["reason"]
                for s in (
                    "changed while it was being read",
                    "not a valid safetensors file",
                    "Git LFS",
                    "is not a regular file",
                )
            ), row["reason"]
        outcomes.append(counts)
    assert outcomes


TRUNCATE_WHEN_MAPPED = '''
import os
import safetensors.torch

_real_open = safetensors.torch.safe_open


def _open_then_truncate(filename, *args, **kwargs):
    """A concurrent writer at the worst moment: the weights file is truncated right after the loader
    opened (memory-mapped) a file of that name, before any tensor is read from it."""
    handle = _real_open(filename, *args, **kwargs)
    if os.path.basename(str(filename)) == "tuned.safetensors":
        os.truncate(os.environ["TRUNCATE_WEIGHTS"], 0)
    return handle


safetensors.torch.safe_open = _open_then_truncate
'''


def test_weights_truncated_while_mapped_never_kill_the_run(zygote, synth):
    """Reading tensors of a mapped file truncated meanwhile is SIGBUS; the loaders only map private copies."""
    (synth.path / "truncator.py").write_text(TRUNCATE_WHEN_MAPPED)
    tuned = synth.tuned()
    args = [*synth_args(synth, tuned), "-p", "truncator", "--forgetting-no-cache"]
    answer, outcome = zygote.run(synth.path, args, env={"TRUNCATE_WEIGHTS": str(tuned)})
    ended_cleanly(answer, outcome, passed=3)  # the copy taken before the truncation was evaluated
    assert tuned.stat().st_size == 0  # it really was truncated while in use
    outcome.written = [k for k in outcome.written if k != "tuned.safetensors"]
    assert_safe(outcome)


def test_resource_module_is_usable():
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    assert hard == resource.RLIM_INFINITY or hard >= MEMORY_LIMIT
