"""docs/contributing.md's recipes work as written: its code blocks run, and each new component is then usable."""

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "contributing.md"

CHECK = """
import json, sys
from pathlib import Path
import torch
from atu import data as datalib, metrics
from atu.attacks import ATTACKS
from atu.config import load_config
from atu.engine import run_stages
from atu.methods import RunContext, get_method
from atu.models import gemma_tokenizer, prepare_tokenizer, tiny_lm

# the method: chosen by name, settings checked, and it trains on a tiny model
# a random model sits near -log(vocabulary) = -12.5 per token: below the default floor, so lower it
cfg = load_config(["model=tiny", "method=bounded_ga", "method.steps=2", "method.lr=1e-3", "method.floor=-20"])
try:
    load_config(["method=bounded_ga", "method.floor=1"])
    raise SystemExit("a floor above 0 passed the range check")
except Exception as e:
    assert "method.floor=1" in str(e), e
tok = gemma_tokenizer(); prepare_tokenizer(tok)
model = tiny_lm(0)
before = [p.detach().clone() for p in model.parameters()]
target = datalib.load_target("Warren Buffett")
ctx = RunContext(model=model, tokenizer=tok, encoder=None, device=torch.device("cpu"), target=target,
                 target_name=target.name, forget_texts=target.forget_corpus[:4], retain_texts=[], other_targets=[],
                 max_length=32)
method = get_method("bounded_ga")(cfg.method, ctx)
method.prepare()
run_stages(method.stages(), method.modules(), lambda stage, info: None, lambda record: None)
assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "bounded_ga changed nothing"

# the metric: a target folder with the new file is scored on it
folder = Path(sys.argv[1]) / "4_Warren_Buffett"
folder.mkdir(parents=True)
(folder / "forget_yesno.json").write_text(json.dumps([{"query": "Is he from Omaha?", "answer": "Yes", "level": "2"}]))
target = datalib.load_target("Warren Buffett", [str(folder.parent)])
assert [p.answer for p in target.probes["forget_yesno"]] == ["Yes"]
assert metrics.label("forget_yesno") == "Forget yes/no ↓"

# the attack: registered by name
assert "uppercase" in ATTACKS and ATTACKS["uppercase"].name == "uppercase"
print("ok")
"""


def test_the_recipes_in_contributing_md_run_and_their_components_work(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 3  # a method, a metric, an attack
    script = "\n".join(blocks) + CHECK
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
