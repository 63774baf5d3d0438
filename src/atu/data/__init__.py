"""Targets and their data, in the RWKU benchmark's file format.

A *root* is a folder of target folders named like RWKU's (`1_Stephen_King/`, `4_Warren_Buffett/`). Roots are searched
in order: the user's `data.roots` first (point one at the full RWKU download to get all 200 targets), then the files
shipped here: `rwku/official/` (RWKU's own files, unchanged) and `rwku/atu/` (targets we wrote in the same schema).
For each file name the first root that has it wins, so official files are never shadowed by ours.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .. import metrics
from ..errors import AtuError, did_you_mean

SHIPPED = Path(__file__).parent / "rwku"
SHIPPED_ROOTS = (SHIPPED / "official", SHIPPED / "atu")

FORGET_CORPUS_FILES = (
    "positive_phi.json",
    "positive.json",
)  # Align-then-Unlearn trains on the Phi-3 corpus when present


@dataclass
class Probe:
    query: str
    answer: str
    level: str
    type: str
    subject: str

    @classmethod
    def parse(cls, item, where: str) -> "Probe":
        if not isinstance(item, dict):
            raise AtuError(f"{where}: each probe must be a JSON object with query/answer/level; fix the file")
        missing = [
            k
            for k in ("query", "answer", "level")
            if not isinstance(item.get(k), (str, int)) or str(item[k]).strip() == ""
        ]
        if missing:
            raise AtuError(
                f"{where}: probe is missing {', '.join(missing)}; every probe needs query, answer and level"
            )
        return cls(
            str(item["query"]),
            str(item["answer"]),
            str(item["level"]),
            str(item.get("type", "")),
            str(item.get("subject", "")),
        )


@dataclass
class Target:
    name: str
    intro: str | None
    folders: list[Path] = field(default_factory=list)
    probes: dict[str, list[Probe]] = field(default_factory=dict)
    forget_corpus: list[str] = field(default_factory=list)
    forget_corpus_source: str | None = None  # the file it came from, or None when nothing is shipped

    @property
    def slug(self) -> str:
        return slug(self.name)

    def file(self, name: str) -> Path | None:
        """`name` in the first of this target's folders that has it (user roots before shipped data)."""
        return next((f / name for f in self.folders if (f / name).is_file()), None)


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def folder_target_name(folder: Path) -> str:
    return re.sub(r"^\d+_", "", folder.name).replace("_", " ")


def _roots(extra=()) -> list[Path]:
    roots = []
    for r in extra:
        p = Path(r).expanduser()
        if not p.is_dir():
            raise AtuError(f"data root {r} is not a directory; pass folders that contain RWKU target folders")
        # a root may also be a single target folder
        roots.append(p)
    return roots + [r for r in SHIPPED_ROOTS if r.is_dir()]


@lru_cache(maxsize=1)
def intros() -> dict[str, str]:
    """RWKU's 200 target names with their one-line introductions."""
    data = json.loads((SHIPPED / "all_intro.json").read_text())
    return {name: lines[0] for name, lines in data.items()}


def general_retain() -> list[str]:
    """General text unrelated to every target (written for atu; data/retain/SOURCE.md): retain losses train on it."""
    return load_texts(Path(__file__).parent / "retain" / "general.json")


def general_retain_heldout() -> list[str]:
    """More general text of the same kind, never trained on: the utility perplexity set."""
    return load_texts(Path(__file__).parent / "retain" / "heldout.json")


def refusals() -> list[str]:
    return [line.strip() for line in (SHIPPED / "idontknow.jsonl").read_text().splitlines() if line.strip()]


def target_folders(extra_roots=()) -> dict[str, list[Path]]:
    """Name -> its folders across all roots, in search order."""
    found: dict[str, list[Path]] = {}
    for root in _roots(extra_roots):
        candidates = [root] if any(root.glob("*.json")) and re.match(r"^\d+_", root.name) else sorted(root.iterdir())
        for folder in candidates:
            if folder.is_dir() and re.match(r"^\d+_", folder.name):
                found.setdefault(_canonical(folder_target_name(folder)), []).append(folder)
    return found


def _canonical(name: str) -> str:
    """Folder names lose punctuation (`Prince_Harry,_Duke_of_Sussex`); match them to RWKU's names."""
    key = lambda s: re.sub(r"[^a-z0-9]", "", s.lower())
    for known in intros():
        if key(known) == key(name):
            return known
    return name


def known_targets(extra_roots=()) -> list[str]:
    names = list(intros())
    names += [n for n in target_folders(extra_roots) if n not in intros()]
    return names


def resolve_name(name: str, extra_roots=(), allow_new: bool = False) -> str:
    names = known_targets(extra_roots)
    lower = {n.lower(): n for n in names}
    if name.lower() in lower:
        return lower[name.lower()]
    if allow_new:
        return name
    raise AtuError(
        f"unknown target {name!r}.{did_you_mean(name, names)} `atu targets` lists them; to unlearn a name we "
        "ship nothing for, add data.allow_new_target=true (its forget corpus is then generated by the model)"
    )


def load_json_list(path: Path) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AtuError(
            f"{path} is not valid JSON ({e.msg if hasattr(e, 'msg') else e}); fix or remove the file"
        ) from None
    if not isinstance(data, list):
        raise AtuError(f"{path} must hold a JSON list of objects; fix or remove the file")
    return data


def load_texts(path: Path) -> list[str]:
    items = load_json_list(path)
    texts = []
    for i, it in enumerate(items):
        text = it.get("text") if isinstance(it, dict) else it if isinstance(it, str) else None
        if not isinstance(text, str):
            raise AtuError(f"{path} item {i} has no 'text' string; a corpus file is a JSON list of {{\"text\": ...}}")
        if text.strip():
            texts.append(text.strip())
    return texts


def load_target(name: str, extra_roots=(), allow_new: bool = False, max_probes: int | None = None) -> Target:
    name = resolve_name(name, extra_roots, allow_new)
    folders = target_folders(extra_roots).get(name, [])
    target = Target(name=name, intro=intros().get(name), folders=folders)
    for key, fname in ((m.key, m.probe_file) for m in metrics.probe_sets()):
        path = target.file(fname)
        if path is not None:
            items = load_json_list(path)
            if not items:
                raise AtuError(
                    f"probe file {path} is empty; add RWKU-format probes (query, answer, level) or remove it"
                )
            probes = [Probe.parse(it, f"{path} item {i}") for i, it in enumerate(items)]
            target.probes[key] = probes[:max_probes] if max_probes else probes
    for fname in FORGET_CORPUS_FILES:
        path = target.file(fname)
        if path is not None:
            target.forget_corpus, target.forget_corpus_source = load_texts(path), str(path)
            break
    return target


def other_targets(target: str, n: int, roots, seed: int) -> list[Target]:
    """Targets with a forget corpus, other than `target`, chosen by seed from the sorted list (not file order)."""
    if n == 0:
        return []
    names = sorted(name for name in target_folders(roots) if name != target)
    loaded = [t for t in (load_target(name, roots) for name in names) if t.forget_corpus]
    random.Random(seed).shuffle(loaded)
    return loaded[:n]
