"""The shipped data and the loader: official RWKU files read unchanged, our files in the same schema."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from atu import data as datalib
from atu.errors import AtuError

ROOT = Path(__file__).resolve().parents[1]
OURS = (
    sorted(p for p in (datalib.SHIPPED / "atu").iterdir() if p.is_dir()) if (datalib.SHIPPED / "atu").is_dir() else []
)


def test_official_files_of_all_200_targets_are_shipped_with_rwku_s_counts():
    """RWKU's README totals: 3,268 FB + 2,879 QA + 6,984 AA forget probes, 5,846 + 5,533 neighbour probes."""
    folders = datalib.target_folders()
    official = {name for name, fs in folders.items() if any(f.parent.name == "official" for f in fs)}
    assert len(official) == 200 and official == set(datalib.intros())
    totals = {}
    for name in official:
        for key, probes in datalib.load_target(name).probes.items():
            totals[key] = totals.get(key, 0) + len(probes)
    assert {k: totals[k] for k in ("forget_fb", "forget_qa", "forget_aa", "neighbor_fb", "neighbor_qa")} == {
        "forget_fb": 3268,
        "forget_qa": 2879,
        "forget_aa": 6984,
        "neighbor_fb": 5846,
        "neighbor_qa": 5533,
    }
    king = datalib.load_target("Stephen King")
    assert king.forget_corpus_source.endswith("official/1_Stephen_King/positive_phi.json.gz")
    assert len(king.forget_corpus) == 582 and king.intro.startswith("Stephen King is a prolific American author")
    assert king.sources["forget_fb"].endswith("official/1_Stephen_King/forget_level1.json.gz")
    # RWKU's quirks: the dot in 87_Robert_Downey_Jr., commas and accents in names
    for name in ("Robert Downey Jr.", "Prince Harry, Duke of Sussex", "Beyoncé", "Catherine, Princess of Wales"):
        assert datalib.load_target(name).probes["forget_qa"], name


def test_our_folders_never_hold_a_file_name_the_official_folder_has():
    shipped = datalib.SHIPPED
    for ours in OURS:
        official = shipped / "official" / ours.name
        names = {p.name.removesuffix(".gz") for p in official.iterdir()} if official.is_dir() else set()
        assert not names & {p.name for p in ours.iterdir()}, ours.name
        if "positive_phi.json" in names:
            assert not (ours / "positive.json").exists(), f"{ours.name}: an official forget corpus exists"


@pytest.mark.parametrize("folder", [f for f in OURS if (f / "rephrase.json").exists()], ids=lambda f: f.name)
def test_paraphrase_sets_reword_official_probes_without_copying_them(folder):
    """tools/check_paraphrases.py: every item rewords one official FB/QA probe, keeps its answer, is no near-copy."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "check_paraphrases.py"), str(folder)], capture_output=True, text=True
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout[-2000:]


def test_every_dev_and_test_target_has_a_paraphrase_set_covering_its_official_probes():
    """The rephrase attack runs on every target a comparison reports or tunes on; each distinct official FB/QA probe
    has a paraphrase, but for the few whose answer cannot be left out of any rewording (at most one per target)."""
    for name in datalib.expand_targets(["dev", "test"]):
        target = datalib.load_target(name)
        originals = {p.original for p in target.probes.get("rephrase", [])}
        official = {p.query for key in ("forget_fb", "forget_qa") for p in target.probes[key]}
        assert originals <= official and len(official - originals) <= 1, (name, sorted(official - originals))


def test_the_paraphrase_check_flags_near_copies_and_given_away_answers(tmp_path):
    folder = tmp_path / "4_Warren_Buffett"
    folder.mkdir()
    original = datalib.load_target("Warren Buffett").probes["forget_qa"][0]
    items = [
        {
            "query": original.query.replace("?", " exactly?"),
            "answer": original.answer,
            "level": "2",
            "type": "paraphrase",
            "subject": "Warren Buffett",
            "original": original.query,
        },
        {
            "query": f"Is it true that the answer is {original.answer}?",
            "answer": original.answer,
            "level": "2",
            "type": "paraphrase",
            "subject": "Warren Buffett",
            "original": original.query,
        },
        {
            "query": "Who?",
            "answer": "x",
            "level": "2",
            "type": "paraphrase",
            "subject": "Warren Buffett",
            "original": "not an official probe",
        },
    ]
    (folder / "rephrase.json").write_text(json.dumps(items))
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "check_paraphrases.py"), str(folder)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "item 0: near-copy" in result.stdout and "item 1: the question contains its answer" in result.stdout
    assert "item 2: 'original' is not one of" in result.stdout


@pytest.mark.parametrize("folder", [f for f in OURS if (f / "multihop.json").exists()], ids=lambda f: f.name)
def test_multihop_sets_follow_the_schema(folder):
    probes = [
        datalib.Probe.parse(it, f"{folder} item {i}")
        for i, it in enumerate(json.loads((folder / "multihop.json").read_text()))
    ]
    assert len(probes) >= 5 and all(p.level == "3" and p.type == "multi-hop" for p in probes)
    assert all(len(p.answer.split()) <= 6 for p in probes)


def test_user_roots_come_first_and_take_any_rwku_folder(tmp_path):
    folder = tmp_path / "201_Ada_Lovelace"
    folder.mkdir()
    (folder / "forget_level2.json").write_text(
        json.dumps(
            [
                {
                    "query": "What did she write notes on?",
                    "answer": "Analytical Engine",
                    "level": "2",
                    "type": "q",
                    "subject": "Ada Lovelace",
                }
            ]
        )
    )
    (folder / "positive.json").write_text(json.dumps([{"text": "Ada Lovelace wrote the first published program."}]))
    t = datalib.load_target("ada lovelace", [str(tmp_path)])
    assert t.name == "Ada Lovelace" and t.probes["forget_qa"][0].answer == "Analytical Engine"
    assert t.forget_corpus == ["Ada Lovelace wrote the first published program."]


def test_unknown_target_suggests_close_names():
    with pytest.raises(AtuError, match="Did you mean: Warren Buffett"):
        datalib.load_target("Warren Bufett")
    assert datalib.load_target("Ada Lovelace", allow_new=True).probes == {}


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"query": "x"}', "JSON list"),
        ('[{"query": "x", "level": "1"}]', "missing answer"),
        ('[{"query": "x", "level": "1", "answer": " "}]', "the probe's answer is empty"),
    ],
)
def test_malformed_probe_files_give_one_clear_error(tmp_path, content, message):
    folder = tmp_path / "1_Stephen_King"
    folder.mkdir()
    (folder / "forget_level1.json").write_text(content)
    with pytest.raises(AtuError, match=message):
        datalib.load_target("Stephen King", [str(tmp_path)])


def test_refusals_and_intros_are_shipped():
    assert len(datalib.refusals()) == 100 and len(datalib.intros()) == 200


def test_a_folder_of_probe_files_whose_name_does_not_parse_is_named(tmp_path):
    folder = tmp_path / "Stephen King probes"
    folder.mkdir()
    (folder / "forget_level1.json").write_text("[]")
    with pytest.raises(AtuError, match="holds RWKU files but its name is not <number>_<Name>"):
        datalib.load_target("Stephen King", [str(tmp_path)])


def test_target_sets_expand_to_the_reference_s_groups():
    assert datalib.expand_targets(["celebs-1"]) == [
        "Stephen King",
        "Confucius",
        "Bruce Lee",
        "Warren Buffett",
        "Christina Aguilera",
    ]
    assert len(datalib.expand_targets(["celebs-2", "celebs-3", "celebs-4"])) == 8 + 7 + 10
    assert datalib.expand_targets(["celebs-4"])[-1] == "Robert Downey Jr."  # RWKU id 87, folder with a dot
    assert datalib.expand_targets(["Bruce Lee", "celebs-1"])[0] == "Bruce Lee"  # names pass, no duplicates


def test_dev_and_test_targets_follow_their_rule_on_the_committed_screen():
    """docs/targets.md's rule (known targets by RWKU id, alternating dev/test) applied to the committed 200-target
    screen gives exactly the shipped `dev` and `test` sets: no target was moved by hand."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("targets_md", ROOT / "tools" / "targets_md.py")
    targets_md = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(targets_md)
    rows = json.loads((ROOT / "benchmarks" / "results" / "targets-fewshot.json").read_text())["targets"]
    assert len({r["target"] for r in rows}) == 200
    dev, test = targets_md.split(rows)
    assert datalib.expand_targets(["dev"]) == dev and datalib.expand_targets(["test"]) == test
    assert not set(dev) & set(test) and len(test) >= 6
    known = {r["target"] for r in rows if r["score"] >= targets_md.KNOWN}
    assert set(dev) | set(test) == known


def test_retain_targets_skip_the_target_itself_and_people_its_probes_name():
    king = datalib.load_target("Stephen King")
    candidates = ["Stephen King", "Drew Barrymore", "Tony Blair", "Linda Hamilton", "Tom Clancy", "Confucius"]
    chosen = datalib.retain_targets(king, candidates, 2, max_probes=3)
    # Drew Barrymore and Linda Hamilton starred in films of King's books: their probes name him
    assert [t.name for t in chosen] == ["Tony Blair", "Tom Clancy"]
    sets = datalib.retain_probes(chosen)
    assert set(sets) == {"retain_fb", "retain_qa"}
    assert [p.subject or p.query for p in sets["retain_fb"]] == [
        p.subject or p.query for t in chosen for p in t.probes["forget_fb"]
    ]
    assert len(sets["retain_fb"]) == len(sets["retain_qa"]) == 6  # 3 probes of each level from each of 2 targets
    with pytest.raises(AtuError, match="eval.retain_targets: .*Tony Blar"):
        datalib.retain_targets(king, ["Tony Blar"], 1)


def test_the_tiny_models_tokenizer_is_shaped_like_gemmas_and_round_trips_any_text():
    from atu.evaluate.generation import stop_ids
    from atu.models import TINY_VOCAB, gemma_tokenizer, tiny_tokenizer

    tiny, gemma = tiny_tokenizer(), gemma_tokenizer()
    text = "Question: Where was Stephen King born?\nAnswer: Portland, Maine — 北京 ✓"
    ids = tiny(text).input_ids
    assert len(tiny) == TINY_VOCAB and max(ids) < TINY_VOCAB and ids[0] == tiny.bos_token_id
    assert tiny.decode(ids, skip_special_tokens=True) == text  # byte fallback: nothing is lost
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        assert getattr(tiny, name) == getattr(gemma, name)
    assert tiny.chat_template is None and gemma.chat_template is None  # both base models: few-shot prompts
    newline = tiny.convert_tokens_to_ids("\n")
    assert newline in stop_ids(tiny) and tiny.decode([newline]) == "\n"  # RWKU's stop at the first newline token
