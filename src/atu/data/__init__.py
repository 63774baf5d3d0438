"""Targets and their data, in the RWKU benchmark's file format.

A *root* is a folder of target folders named like RWKU's (`1_Stephen_King/`, `4_Warren_Buffett/`). Roots are searched
in order: the user's `data.roots` first, then the files shipped here: `rwku/official/` (RWKU's own files for all 200
targets, byte for byte, gzip-compressed: `forget_level1.json.gz` reads as `forget_level1.json`) and `rwku/atu/` (our
extras: paraphrase and multi-hop sets, and forget corpora where RWKU ships none). For each file name the first folder
that has it wins, and our folders hold no file name an official folder of the same target has, so an official file is
never shadowed by ours.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from omegaconf import OmegaConf

from .. import metrics
from ..errors import AtuError, did_you_mean

SHIPPED = Path(__file__).parent / "rwku"
SHIPPED_ROOTS = (SHIPPED / "official", SHIPPED / "atu")
TARGET_SETS = Path(__file__).parent / "target_sets"  # <name>.yaml: `ids: [RWKU ids]` or `names: [...]`

# the forget corpus: Align-then-Unlearn trains on RWKU's Phi-3 corpus when present, then the Llama-3 one (or ours)
FORGET_CORPUS_FILES = ("positive_phi.json", "positive.json")
FOLDER_NAME = re.compile(r"^(\d+)_(.+)$")  # RWKU's "<id>_<Name_with_underscores>"


@dataclass
class Probe:
    query: str
    answer: str
    level: str
    type: str
    subject: str
    original: str = ""  # a paraphrase: the official probe it rewords

    @classmethod
    def parse(cls, item, where: str) -> "Probe":
        if not isinstance(item, dict):
            raise AtuError(f"{where}: each probe must be a JSON object with query/answer/level; fix the file")
        missing = [k for k in ("query", "answer", "level") if not isinstance(item.get(k), (str, int))]
        if missing:
            raise AtuError(
                f"{where}: probe is missing {', '.join(missing)}; every probe needs query, answer and level"
            )
        empty = [k for k in ("query", "answer", "level") if str(item[k]).strip() == ""]
        if empty:
            raise AtuError(f"{where}: the probe's {' and '.join(empty)} is empty; give it text or remove the probe")
        return cls(
            str(item["query"]),
            str(item["answer"]),
            str(item["level"]),
            str(item.get("type", "")),
            str(item.get("subject", "")),
            str(item.get("original", "")),
        )


@dataclass
class Target:
    name: str
    intro: str | None
    folders: list[Path] = field(default_factory=list)
    probes: dict[str, list[Probe]] = field(default_factory=dict)
    forget_corpus: list[str] = field(default_factory=list)
    forget_corpus_source: str | None = None  # the file it came from, or None when nothing is shipped
    sources: dict[str, str] = field(default_factory=dict)  # probe set -> the file it was read from

    @property
    def slug(self) -> str:
        return slug(self.name)

    def file(self, name: str) -> Path | None:
        """`name` (or `name.gz`) in the first of this target's folders that has it (user roots before shipped data)."""
        for folder in self.folders:
            for path in (folder / name, folder / f"{name}.gz"):
                if path.is_file():
                    return path
        return None


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def folder_target_name(folder: Path) -> str:
    return FOLDER_NAME.match(folder.name).group(2).replace("_", " ")


def _user_roots(extra=()) -> list[Path]:
    roots = []
    for r in extra:
        p = Path(r).expanduser()
        if not p.is_dir():
            raise AtuError(f"data root {r} is not a directory; pass folders that contain RWKU target folders")
        roots.append(p)
    return roots


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
    """Name -> its folders across all roots, in search order: the user's roots, then the shipped ones."""
    found = _scan(_user_roots(extra_roots))
    for name, folders in _shipped_folders().items():
        found.setdefault(name, []).extend(folders)
    return found


@lru_cache(maxsize=1)
def _shipped_folders() -> dict[str, list[Path]]:
    return _scan([r for r in SHIPPED_ROOTS if r.is_dir()])


def _scan(roots: list[Path]) -> dict[str, list[Path]]:
    """A root may also be one target folder."""
    found: dict[str, list[Path]] = {}
    for root in roots:
        candidates = [root] if _rwku_files(root) and FOLDER_NAME.match(root.name) else sorted(root.iterdir())
        for folder in candidates:
            if not folder.is_dir():
                continue
            if not FOLDER_NAME.match(folder.name):
                if _rwku_files(folder):  # a folder of probe files whose name says nothing of the target
                    raise AtuError(
                        f"target folder {folder} holds RWKU files but its name is not <number>_<Name> "
                        "(as 4_Warren_Buffett); rename it so the target can be told"
                    )
                continue
            found.setdefault(_canonical(folder_target_name(folder)), []).append(folder)
    return found


def _rwku_files(folder: Path) -> bool:
    probe_files = {m.probe_file for m in metrics.probe_sets()} | set(FORGET_CORPUS_FILES)
    return folder.is_dir() and any((folder / f).is_file() or (folder / f"{f}.gz").is_file() for f in probe_files)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@lru_cache(maxsize=1)
def _names_by_key() -> dict[str, str]:
    return {_key(name): name for name in intros()}


def _canonical(name: str) -> str:
    """Folder names lose punctuation (`Prince_Harry,_Duke_of_Sussex`); match them to RWKU's names."""
    return _names_by_key().get(_key(name), name)


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


def read_json(path: Path):
    """A JSON file, or a gzip-compressed one (`.gz`, as the official files are shipped)."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return json.loads(raw.decode("utf-8"))


def load_json_list(path: Path) -> list:
    try:
        data = read_json(path)
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
            target.sources[key] = str(path)
    for fname in FORGET_CORPUS_FILES:
        path = target.file(fname)
        if path is not None:
            target.forget_corpus, target.forget_corpus_source = load_texts(path), str(path)
            break
    return target


RETAIN_SETS = {"retain_fb": "forget_fb", "retain_qa": "forget_qa"}  # the retain score's sets: others' forget FB/QA


def _mentions(target: Target, name: str) -> bool:
    text = " ".join(f"{p.query} {p.answer}" for items in target.probes.values() for p in items).lower()
    return name.lower() in text


def retain_targets(target: Target, candidates, count: int, roots=(), max_probes: int | None = None) -> list[Target]:
    """The first `count` candidates that are not `target` and unrelated to it (neither is named in the other's
    probes), loaded with their probes."""
    chosen = []
    for name in candidates:
        if len(chosen) == count:
            break
        try:
            other = load_target(name, roots)  # all its probes: a relation may be named in any of them
        except AtuError as e:
            raise AtuError(f"eval.retain_targets: {e}") from None
        if other.name != target.name and not _mentions(target, other.name) and not _mentions(other, target.name):
            other.probes = {k: v[:max_probes] if max_probes else v for k, v in other.probes.items()}
            chosen.append(other)
    return chosen


def retain_probes(others: list[Target]) -> dict[str, list[Probe]]:
    """The retain score's probe sets: every chosen target's forget FB and QA probes, pooled per level."""
    return {key: [p for t in others for p in t.probes.get(level, [])] for key, level in RETAIN_SETS.items()}


def other_targets(target: str, n: int, roots, seed: int) -> list[Target]:
    """Targets with a forget corpus, other than `target`, chosen by seed from the sorted list (not file order)."""
    if n == 0:
        return []
    folders = target_folders(roots)
    with_corpus = [
        name
        for name in sorted(folders)
        if name != target and any(Target(name, None, folders[name]).file(f) for f in FORGET_CORPUS_FILES)
    ]
    random.Random(seed).shuffle(with_corpus)
    return [load_target(name, roots) for name in with_corpus[:n]]


def target_sets() -> list[str]:
    return sorted(p.stem for p in TARGET_SETS.glob("*.yaml"))


def expand_targets(names: list[str], roots=()) -> list[str]:
    """Target names, with each named target set (`celebs-1`, ...) replaced by its targets, in order."""
    out = []
    for name in names:
        path = TARGET_SETS / f"{name}.yaml"
        if not path.exists():
            out.append(name)
            continue
        spec = OmegaConf.load(path)
        by_id = {
            int(FOLDER_NAME.match(f.name).group(1)): n
            for n, fs in _shipped_folders().items()
            for f in fs
            if f.parent == SHIPPED_ROOTS[0]
        }
        out += [by_id[i] for i in spec.get("ids", [])] + list(spec.get("names", []))
    return list(dict.fromkeys(out))
