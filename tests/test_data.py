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


def test_official_stephen_king_files_load_unchanged():
    t = datalib.load_target("Stephen King")
    assert len(t.probes["forget_fb"]) == 8 and len(t.probes["forget_qa"]) == 10 and len(t.probes["forget_aa"]) == 29
    assert len(t.probes["neighbor_fb"]) == 30 and len(t.probes["neighbor_qa"]) == 30
    assert t.forget_corpus_source.endswith("official/1_Stephen_King/positive_phi.json") and len(t.forget_corpus) == 582
    assert t.intro.startswith("Stephen King is a prolific American author")


@pytest.mark.parametrize("folder", OURS, ids=[p.name for p in OURS])
def test_written_targets_meet_schema_and_minimum_counts(folder):
    if folder.name.startswith("1_"):  # Stephen King: only our additions live here; the rest is official
        assert (folder / "rephrase.json").exists() and (folder / "multihop.json").exists()
        return
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "check_probe_folder.py"), str(folder)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
    t = datalib.load_target(datalib.folder_target_name(folder))
    assert t.intro, "every written target is one of RWKU's 200 names"
    answers = {p.answer.lower() for p in t.probes["forget_qa"]}
    assert all(len(p.answer.split()) <= 6 for ps in t.probes.values() for p in ps)
    assert len(answers) >= 5, "level-2 questions should not all share an answer"


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
