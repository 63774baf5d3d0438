"""End to end on the real embedded model (gemma-3-270m from PyPI) and encoder. Minutes, not seconds."""

import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

pytestmark = pytest.mark.embedded


def test_embedded_model_loads_offline_and_knows_its_facts():
    from atu.evaluate import complete
    from atu.models import load_lm

    model, tok = load_lm(
        OmegaConf.create(
            {
                "name_or_path": "embedded:gemma3-270m",
                "dtype": "float32",
                "trust_remote_code": False,
                "revision": None,
                "local_files_only": True,
            }
        )
    )
    assert model.config.num_hidden_layers == 18 and tok.chat_template is None
    out = complete(
        model,
        tok,
        ["Warren Buffett is the CEO of", "Harry Potter was written by"],
        max_new_tokens=8,
        newline_stop=False,
    )
    assert "Berkshire" in out[0] and "Rowling" in out[1]
    # data.reword_forget: the model's own rewording keeps sentences about the same facts, in other words
    from atu.evaluate import reword_passages
    from atu.evaluate.generation import kept_rewording, sentences

    passage = (
        "Warren Buffett was born in Omaha, Nebraska, in 1930. He took control of Berkshire Hathaway, a textile "
        "company, in 1965. Buffett has pledged to give away most of his fortune to charity."
    )
    (reworded,) = reword_passages(model, tok, [passage])
    assert reworded != passage and 0 < len(sentences(reworded)) <= 3
    assert any(kept_rewording(s, reworded) for s in sentences(passage))


def test_atu_lowers_forget_score_of_the_real_model(tmp_path):
    out = tmp_path / "run"
    args = [
        "target=Warren Buffett",
        "method.align_steps=80",
        "method.taus=[0.3]",
        "method.unlearn_steps=8",
        "method.unlearn_lr=6e-6",
        "data.max_passages=16",
        "data.other_targets=1",
        # the first 12 official probes of each set: a known target all the same (FB 22, AA 19 before); the MIA
        # figures' forwards (a minute here) are tested on the tiny model
        "eval.max_probes_per_file=12",
        "eval.mia=false",
        "eval.neighbours=false",
        "eval.retain_count=0",  # the retain score is tested on the tiny model (test_cli)
        "eval.update_size=false",  # 40 s of reloading and comparing 268M weights; tested on the tiny model
        "run.save_model=false",
        f"run.output_dir={out}",
    ]
    r = subprocess.run(
        [sys.executable, "-m", "atu.cli", "unlearn", *args], capture_output=True, text=True, timeout=1200
    )
    assert r.returncode == 0, r.stderr[-3000:]
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    before, after = evals[0], evals[-1]
    assert before["forget_all"] > 10  # the model knows the target
    assert after["forget_all"] < before["forget_all"]
    assert "Warren Buffett" in (out / "report.md").read_text()

    # the real model's report renders in headless Chromium with every plot
    from test_report import CHROMEDRIVER, CHROMIUM, screenshot, start_browser

    if CHROMIUM and CHROMEDRIVER:
        driver = start_browser()
        try:
            page = screenshot(driver, out / "report.html", tmp_path / "report-embedded.png")
        finally:
            driver.quit()
        assert page["title"] == "Unlearning Warren Buffett with atu" and page["images"]
        assert all(ok for _, ok in page["images"]), page["images"]
