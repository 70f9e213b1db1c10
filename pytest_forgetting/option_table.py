"""The table of the plugin's options: each CLI flag with its ini key, environment variable, default and kind.

``options.py`` turns them into pytest options (``add_options``) and resolves them into ``Settings``
(``resolve``); it re-exports ``Option``, ``OPTIONS`` and ``INCONCLUSIVE_ACTIONS``. Standard library only.
"""

from __future__ import annotations

from typing import Any, NamedTuple

INCONCLUSIVE_ACTIONS = ("fail", "warn", "pass")


class Option(NamedTuple):  # a NamedTuple, not a dataclass: it is built at every pytest start-up
    name: str  # Settings attribute
    cli: str
    help: str
    ini: str | None = None
    env: str | None = None
    default: Any = None
    kind: str = "str"  # str | bool | list | path | paths
    metavar: str | None = None
    choices: tuple[str, ...] | None = None


OPTIONS: tuple[Option, ...] = (
    Option(
        "base_ckpt",
        "--base-ckpt",
        "base checkpoint: HF model folder, .safetensors file (with --model-factory), .gguf file or hub id",
        "forgetting_base_ckpt",
        "FORGETTING_BASE_CKPT",
        kind="path",
        metavar="REF",
    ),
    Option(
        "tuned_ckpts",
        "--tuned-ckpt",
        "fine-tuned checkpoint (repeat to compare several candidates)",
        "forgetting_tuned_ckpt",
        "FORGETTING_TUNED_CKPT",
        default=(),
        kind="paths",
        metavar="REF",
    ),
    Option(
        "model_factory",
        "--model-factory",
        "module:callable building the nn.Module for a bare .safetensors checkpoint",
        "forgetting_model_factory",
        metavar="MOD:FN",
    ),
    Option(
        "device",
        "--forgetting-device",
        "auto | cpu | cuda | cuda:N (default auto: CUDA when available)",
        "forgetting_device",
        default="auto",
        metavar="DEV",
    ),
    Option(
        "dtype",
        "--forgetting-dtype",
        "dtype both models are evaluated in",
        "forgetting_dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
    ),
    Option(
        "batch_size",
        "--forgetting-batch-size",
        "evaluation batch size, or auto (halves on CUDA OOM for both models alike)",
        "forgetting_batch_size",
        default="64",
        metavar="N|auto",
    ),
    Option(
        "alpha",
        "--forgetting-alpha",
        "one-sided error rate of every verdict (default 0.05)",
        "forgetting_alpha",
        default="0.05",
        metavar="A",
    ),
    Option(
        "inconclusive",
        "--forgetting-inconclusive",
        "what an INCONCLUSIVE verdict does to the test (default fail)",
        "forgetting_inconclusive",
        default="fail",
        choices=INCONCLUSIVE_ACTIONS,
    ),
    Option("limit", "--forgetting-limit", "seeded subsample of N examples per task (smoke runs)", None, metavar="N"),
    Option(
        "seed",
        "--forgetting-seed",
        "seed of subsampling and bootstrap (default 0)",
        "forgetting_seed",
        default="0",
        metavar="N",
    ),
    Option(
        "json_path",
        "--forgetting-json",
        "write the machine-readable report here",
        "forgetting_json",
        kind="path",
        metavar="PATH",
    ),
    Option(
        "markdown_path",
        "--forgetting-markdown",
        "write the summary table as Markdown here",
        "forgetting_markdown",
        kind="path",
        metavar="PATH",
    ),
    Option(
        "plot_path",
        "--forgetting-plot",
        "write a PNG of base vs tuned per task with intervals (needs matplotlib)",
        "forgetting_plot",
        kind="path",
        metavar="PATH",
    ),
    Option(
        "cache_dir",
        "--forgetting-cache-dir",
        (
            "cache of base-model evaluations (default: the user cache folder, e.g. ~/.cache/pytest-forgetting; "
            "never a folder git tracks)"
        ),
        "forgetting_cache_dir",
        "FORGETTING_CACHE_DIR",
        kind="path",
        metavar="DIR",
    ),
    Option(
        "no_cache",
        "--forgetting-no-cache",
        "do not read or write the base-evaluation cache",
        None,
        default=False,
        kind="bool",
    ),
    Option(
        "allow_pickle",
        "--forgetting-allow-pickle",
        "permit .bin/.pt/.pth pickle checkpoints (still loaded with weights_only=True)",
        None,
        default=False,
        kind="bool",
    ),
    Option(
        "trust_remote_code",
        "--forgetting-trust-remote-code",
        "permit checkpoints that carry their own Python code",
        None,
        default=False,
        kind="bool",
    ),
    Option(
        "early_stop",
        "--forgetting-early-stop",
        (
            "evaluate the tuned model in seeded random order and stop once the verdict is settled "
            "(anytime-valid confidence sequence)"
        ),
        "forgetting_early_stop",
        default=False,
        kind="bool",
    ),
    Option(
        "representation_drift",
        "--forgetting-representation-drift",
        (
            "also compute linear CKA between base and tuned hidden states per layer on each check's examples "
            "(Hugging Face models)"
        ),
        "forgetting_representation_drift",
        default=False,
        kind="bool",
    ),
    Option(
        "retains",
        "--retains",
        "declare a retention check without writing a test: TASK:MAX_DROP[,key=value...] (repeatable)",
        None,
        default=(),
        kind="list",
        metavar="SPEC",
    ),
    Option(
        "improves",
        "--improves",
        "declare an improvement check: TASK:MIN_GAIN[,key=value...] (repeatable)",
        None,
        default=(),
        kind="list",
        metavar="SPEC",
    ),
    Option(
        "tasks",
        "--forgetting-task",
        (
            "declare a data task without Python: NAME=FORMAT:PATH[,key=value...], "
            "FORMAT csv|jsonl|conll|parquet|datasets|hub, keys text= label= id= class_names=a|b ... (repeatable)"
        ),
        None,
        default=(),
        kind="list",
        metavar="NAME=FORMAT:PATH,...",
    ),
    Option(
        "list_tasks",
        "--forgetting-list-tasks",
        "list every registered task with its metrics, splits and size, and exit",
        None,
        default=False,
        kind="bool",
    ),
    Option(
        "allow_download",
        "--forgetting-allow-download",
        "let hub ids download (default: local Hugging Face cache only)",
        None,
        default=False,
        kind="bool",
    ),
    Option(
        "device_map",
        "--forgetting-device-map",
        (
            "split Hugging Face folders too large for one device with accelerate: "
            "auto | balanced | balanced_low_0 | sequential | "
            "a JSON file mapping module names to devices (cpu, disk, N, cuda:N)"
        ),
        "forgetting_device_map",
        "FORGETTING_DEVICE_MAP",
        metavar="MAP",
    ),
    Option(
        "lm_eval_include",
        "--forgetting-lm-eval-include",
        (
            "folder of lm-evaluation-harness YAML tasks for lm-eval:NAME checks "
            "(repeatable; searched before lm-eval's bundled tasks)"
        ),
        "forgetting_lm_eval_include",
        "FORGETTING_LM_EVAL_INCLUDE",
        default=(),
        kind="paths",
        metavar="DIR",
    ),
    Option(
        "lm_eval_fewshot",
        "--forgetting-lm-eval-fewshot",
        "few-shot examples per document for lm-eval:NAME checks, both models alike (default: each task's own)",
        "forgetting_lm_eval_fewshot",
        "FORGETTING_LM_EVAL_FEWSHOT",
        metavar="N",
    ),
    Option(
        "lm_eval_chat_template",
        "--forgetting-lm-eval-chat-template",
        "apply the checkpoint's chat template to lm-eval:NAME prompts (both models alike)",
        "forgetting_lm_eval_chat_template",
        kind="bool",
    ),
    Option(
        "progress",
        "--forgetting-progress",
        (
            "a progress line per evaluation that takes over 2 s (model, task, examples done, rate, ETA): "
            "auto (not under -q; a line every 30 s when the output is no terminal), on (under -q too) or off"
        ),
        "forgetting_progress",
        "FORGETTING_PROGRESS",
        default="auto",
        choices=("auto", "on", "off"),
    ),
    Option(
        "distributed",
        "--forgetting-distributed",
        (
            "data-parallel evaluation over torch.distributed ranks: each rank evaluates a shard of every task, "
            "rank 0 decides and reports "
            "(on by itself under torchrun / accelerate launch with more than one process)"
        ),
        "forgetting_distributed",
        "FORGETTING_DISTRIBUTED",
        default=False,
        kind="bool",
    ),
    Option(
        "max_memory",
        "--forgetting-max-memory",
        "memory budget per device for --forgetting-device-map auto/balanced/sequential, e.g. cpu=40GiB,0=10GiB",
        "forgetting_max_memory",
        "FORGETTING_MAX_MEMORY",
        metavar="DEV=SIZE,...",
    ),
)
