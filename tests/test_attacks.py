"""Attacks and membership inference: quantization error bounds, MIA scores on hand-made probabilities, the relearning
split, the probe's held-out accuracy, and `atu attack` over a tiny run folder."""

import json
import math
import zlib

import pytest
import torch
from omegaconf import OmegaConf

from atu.attacks import matched_level, point_at_forget
from atu.attacks.incontext import with_context
from atu.attacks.probe import fit_and_score, split
from atu.quantization import quantize_model, quantize_rtn, update_size
from atu.attacks.relearn import split_probes, worst_case
from atu.attacks.rephrase import on_original_scale, paired_scores
from atu.data import Probe
from atu.errors import AtuError
from atu.metrics import recovered
from atu.runs import Run, finished_runs
from atu.evaluate.mia import auc, loss_score, min_k_score, zlib_score
from test_cli import TINY, atu


def test_rtn_quantization_error_is_within_half_a_step_and_shrinks_with_bits():
    torch.manual_seed(0)
    w = torch.randn(8, 256)
    for bits in (8, 4):
        q = quantize_rtn(w, bits, group_size=128)
        step = w.reshape(8, 2, 128).abs().amax(-1, keepdim=True) / (2 ** (bits - 1) - 1)
        err = (q - w).reshape(8, 2, 128).abs()
        assert (err <= step / 2 + 1e-6).all()
        assert len(torch.unique(q.reshape(8, 2, 128)[0, 0])) <= 2**bits
    assert (quantize_rtn(w, 8) - w).abs().mean() < (quantize_rtn(w, 4) - w).abs().mean()
    exact = torch.tensor([[-7.0, -1.0, 0.0, 3.0, 7.0] + [0.0] * 123])
    assert torch.equal(quantize_rtn(exact, 4), exact)  # values on the 4-bit grid survive unchanged


def test_quantize_model_touches_only_block_linears(tiny_model):
    emb = tiny_model.model.embed_tokens.weight.clone()
    q = tiny_model.model.layers[0].self_attn.q_proj.weight.clone()
    assert quantize_model(tiny_model, 4) > 0
    assert torch.equal(tiny_model.model.embed_tokens.weight, emb)
    assert not torch.equal(tiny_model.model.layers[0].self_attn.q_proj.weight, q)


def test_bitsandbytes_int8_and_nf4_load_a_saved_model_with_bounded_error(tiny_model, tmp_path):
    import bitsandbytes as bnb
    from omegaconf import OmegaConf

    from atu.models import load_lm

    tiny_model.save_pretrained(tmp_path)
    cfg = OmegaConf.create(
        {
            "name_or_path": str(tmp_path),
            "dtype": "float32",
            "trust_remote_code": False,
            "local_files_only": True,
            "revision": None,
        }
    )
    ids = torch.randint(1000, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = tiny_model(input_ids=ids).logits
        errors = {}
        for kind, layer_type in (("int8", bnb.nn.Linear8bitLt), ("nf4", bnb.nn.Linear4bit)):
            model, _ = load_lm(cfg, "cpu", quantize=kind)
            assert isinstance(model.model.layers[0].mlp.down_proj, layer_type)
            errors[kind] = (model(input_ids=ids).logits - ref).abs().mean() / ref.abs().mean()
    assert 0 < errors["int8"] < errors["nf4"] < 0.5  # changed, less at 8 bits than at 4, and still the same model


def test_update_size_counts_the_weights_whose_quantized_code_moved():
    import copy

    from atu.models import decoder_layers, tiny_lm

    original = tiny_lm(seed=0, layers=2, vocab=512)
    q = decoder_layers(original)[0].self_attn.q_proj.weight  # 64 inputs: one group per row
    s = 0.01
    with torch.no_grad():
        q[0] = 0.0
        q[0, 0] = 127 * s  # row 0: int8 step s, codes [127, 0, 0, ...]; int4 step 127 s / 7
    unlearned = copy.deepcopy(original)
    with torch.no_grad():
        w = decoder_layers(unlearned)[0].self_attn.q_proj.weight
        w[0, 1] += 0.6 * s  # its int8 code becomes 1, its int4 code stays 0
        w[0, 2] += 0.2 * s  # both codes stay 0: 8-bit quantization undoes this update
    total = sum(
        m.weight.numel() for b in decoder_layers(original) for m in b.modules() if isinstance(m, torch.nn.Linear)
    )
    sizes = update_size(original, unlearned)
    assert sizes["int8_codes_changed"] == pytest.approx(100 / total) and sizes["int4_codes_changed"] == 0
    assert sizes["update_over_int8_step_p50"] == pytest.approx(0.4, abs=1e-4)  # the moved weights: 0.6 and 0.2 steps
    assert sizes["update_over_int8_step_p99"] == pytest.approx(0.596, abs=1e-4)
    assert update_size(original, copy.deepcopy(original)) == {}


def test_mia_scores_on_hand_made_token_probabilities():
    logps = [math.log(0.5), math.log(0.25), math.log(0.125), math.log(0.5), math.log(0.5)]
    assert loss_score(logps) == pytest.approx(sum(logps) / 5)
    assert min_k_score(logps, k=0.2) == pytest.approx(math.log(0.125))  # the single lowest of five
    assert min_k_score(logps, k=0.4) == pytest.approx((math.log(0.125) + math.log(0.25)) / 2)
    text = "Warren Buffett lives in Omaha."
    assert zlib_score(logps, text) == pytest.approx(sum(logps) / len(zlib.compress(text.encode())))
    assert auc([3, 4], [1, 2]) == 1.0 and auc([1, 2], [3, 4]) == 0.0 and auc([1, 2], [1, 2]) == 0.5


def _probes(n):
    return [
        Probe(query=f"Question number {i}?", answer=f"answer {i}", level="2", type="", subject="X") for i in range(n)
    ]


def test_relearning_worst_case_is_the_highest_score_and_on_a_tie_the_larger_recovery():
    lr6 = {"metric": "lr 1e-06", "before": 28.6, "after": 28.6, "after_attack": 42.9}  # original not above: no share
    lr5 = {"metric": "lr 1e-05", "before": 42.9, "after": 28.6, "after_attack": 42.9}  # 100% of what was forgotten
    lr4 = {"metric": "lr 1e-04", "before": 28.6, "after": 28.6, "after_attack": 14.3}
    assert worst_case([lr6, lr5, lr4]) is lr5 and worst_case([lr5, lr6]) is lr5
    assert worst_case([lr4, dict(lr6, after_attack=57.1), lr5])["metric"] == "lr 1e-06"  # the higher score first


def test_relearning_split_never_trains_on_the_questions_it_scores():
    probes = _probes(15)
    train, held = split_probes(probes, seed=3)
    assert {p.query for p in train}.isdisjoint({p.query for p in held})
    assert len(train) + len(held) == 15 and abs(len(train) - len(held)) <= 1
    assert split_probes(probes, seed=3) == (train, held)


def test_incontext_prompts_hold_other_facts_never_the_asked_answer():
    probes = _probes(6)
    for p, q in zip(probes, with_context(probes, n_facts=3, seed=0)):
        assert q.query.endswith(f"Question: {p.query}") and q.query.count("Answer:") == 3
        assert f"Answer: {p.answer}\n" not in q.query and q.type == "incontext learning"


def test_rephrase_attack_compares_each_paraphrase_with_its_own_original():
    """Only pairs evaluated on both sides count; the originals give before/after, the paraphrases the attack."""
    para = [
        Probe("Reworded one?", "a", "2", "paraphrase", "X", original="Original ___ one."),
        Probe("Reworded two?", "b", "2", "paraphrase", "X", original="Original two?"),
        Probe("Reworded three?", "c", "2", "paraphrase", "X", original="Never evaluated?"),
    ]

    def records(orig_one, orig_two, para_one, para_two, para_three):
        return [
            {"set": "forget_fb", "query": "Original ___ one.", "score": orig_one},
            {"set": "forget_qa", "query": "Original two?", "score": orig_two},
            {"set": "neighbor_qa", "query": "Never evaluated?", "score": 100.0},  # not a forget probe: no pair
            {"set": "rephrase", "query": "Reworded one?", "score": para_one},
            {"set": "rephrase", "query": "Reworded two?", "score": para_two},
            {"set": "rephrase", "query": "Reworded three?", "score": para_three},
        ]

    got = paired_scores(para, records(100, 50, 80, 40, 90), records(0, 10, 60, 20, 90))
    assert got == {
        "original_before": 75,
        "original_after": 5,
        "paraphrase_before": 60,
        "paraphrase_after": 40,
        "pairs": 2,
    }
    assert paired_scores(para, records(100, 50, 80, 40, 90)[:2], records(0, 10, 60, 20, 90)) is None
    # paraphrases harder before (60 vs 75) and down by a third where the originals fell by 93%: 64% recovered
    scaled = on_original_scale(got)
    assert scaled == 50 and recovered({"before": 75, "after": 5, "after_attack": scaled}) == pytest.approx(45 / 70)


def test_probe_is_scored_on_held_out_sentences():
    pos, neg = [f"pos {i}" for i in range(40)], [f"neg {i}" for i in range(60)]
    train, test = split(pos, neg, seed=0)
    assert {s for s, _ in train}.isdisjoint({s for s, _ in test}) and len(test) == 24
    torch.manual_seed(0)
    x = torch.randn(200, 16)
    y = (x[:, 0] > 0).long()
    assert fit_and_score(x[:140], y[:140], x[140:], y[140:]) > 0.9
    noise = torch.randint(0, 2, (200,))
    assert fit_and_score(x[:140], noise[:140], x[140:], noise[140:]) < 0.75


def test_atu_attack_over_a_tiny_run_writes_the_robustness_table(tmp_path):
    out = tmp_path / "run"
    r = atu(
        "unlearn",
        *[a for a in TINY if not a.startswith("target=")],
        "target=Warren Buffett",
        "eval.max_probes_per_file=4",
        "eval.save_points=true",
        f"run.output_dir={out}",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    point = out / "points" / "unlearn1"  # every evaluation but the last keeps its model, as a run folder of its own
    assert (point / "model" / "config.json").exists() and (point / "head.json").exists()
    assert [e["stage"] for e in map(json.loads, (point / "metrics.jsonl").read_text().splitlines())] == [
        "before",
        "unlearn1",
    ]
    assert not (out / "points" / "unlearn2").exists()  # the last evaluation's model is the run's own
    assert [r.path for r in finished_runs(tmp_path)] == [out]  # compare --collect: points are on the run's front
    r = atu("attack", str(out), "--attacks", "quant4,bnb4,update_size,relearn,incontext,rephrase,mia,probe")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((out / "attacks" / "attacks.json").read_text())
    names = {"quant4", "bnb4", "update_size", "relearn", "incontext", "rephrase", "mia", "probe"}
    assert {r["attack"] for r in rows} == names
    sizes = {r["metric"]: r["after"] for r in rows if r["attack"] == "update_size"}
    assert 0 < sizes["int8_codes_changed"] <= 100 and sizes["update_over_int8_step_p99"] > 0  # lr 1e-3 moved them
    assert all(r["seconds"] >= 0 for r in rows)
    relearned = [r for r in rows if r["attack"] == "relearn"]  # one row per learning rate, then the worst of them
    assert [r["metric"] for r in relearned] == [
        "forget_qa, lr 1e-06",
        "forget_qa, lr 1e-05",
        "forget_qa, lr 0.0001",
    ] + ["forget_qa, worst lr"]
    assert all("original model after the same fine-tuning" in r["note"] for r in relearned)
    assert relearned[-1]["after_attack"] == max(r["after_attack"] for r in relearned[:3])  # the attacker's best
    mia_rows = [r for r in rows if r["attack"] == "mia"]
    assert len(mia_rows) == 3 and all(0 <= r["before"] <= 100 for r in mia_rows)
    assert "| quant4 | Forget all ↓ |" in (out / "attacks" / "attacks.md").read_text()
    r = atu("attack", str(out), "--attacks", "quant8,incontext")  # a later attack joins the table; a re-run replaces
    assert r.returncode == 0, r.stderr[-2000:]
    again = json.loads((out / "attacks" / "attacks.json").read_text())
    assert [x["attack"] for x in again if x["attack"] not in ("quant8", "incontext")] == [
        x["attack"] for x in rows if x["attack"] != "incontext"
    ]
    assert sum(x["attack"] == "incontext" for x in again) == 1 and sum(x["attack"] == "quant8" for x in again) == 2
    bad = atu("attack", str(out), "--attacks", "quant3")
    assert bad.returncode == 2 and "unknown attack 'quant3'" in bad.stderr
    # two runs at matched forgetting: each attacked at its evaluation closest to the deepest level both reach
    side = tmp_path / "matched.md"
    small_utility = ("eval.utility_limit=3",)  # 3 items of each of Buffett's RWKU utility sets
    # evaluation bookkeeping that changes no score (eval.every) does not make the original relearn again
    config = OmegaConf.load(point / "config.yaml")
    config.eval.every = 7
    OmegaConf.save(config, point / "config.yaml")
    r = atu(
        "attack",
        str(out),
        str(point),
        "--attacks",
        "rephrase,relearn,mia,probe,utility",
        "--out",
        str(side),
        *small_utility,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    # the original model is loaded, relearned, membership-tested and probed once for both runs; each unlearned model
    # is relearned at every learning rate
    assert r.stderr.count("loading the original model") == 1
    assert r.stderr.count("relearning the original model") == 3
    assert r.stderr.count("relearning the unlearned model") == 6
    assert r.stderr.count("membership inference on the original model") == 1
    fronts = [[e["forget_all"] for e in Run(f).evals() if e["stage"] != "before"] for f in (out, point)]
    level = max(min(front) for front in fronts)
    folders = [point_at_forget(Run(f), level)[0].path for f in (out, point)]  # where each run was attacked
    attacked = [json.loads((f / "attacks" / "attacks.json").read_text()) for f in folders]
    assert r.stderr.count("probing the original model") == sum(x["attack"] == "probe" for x in attacked[0]) >= 1
    # utility (not an attack) at the attacked points: the original measured once, each unlearned model once
    assert r.stderr.count("utility: perplexity") == 3
    for rows in attacked:
        useful = {x["metric"]: x for x in rows if x["attack"] == "utility"}
        assert 0 <= useful["mmlu"]["after"] <= 1 and useful["perplexity"]["after"] > 1
        assert useful["mmlu"]["note"] == "RWKU's Warren Buffett set" and useful["mmlu"]["after_attack"] is None
        assert {"bbh", "truthfulqa_mc1", "triviaqa_f1", "fluency_entropy"} <= set(useful)  # Buffett's own sets
    for name in ("relearn", "mia", "probe", "utility"):
        assert [x["before"] for x in attacked[0] if x["attack"] == name] == [
            x["before"] for x in attacked[1] if x["attack"] == name
        ]
    assert f"forget-all <= {level:g}" in side.read_text() and f"| {out} | {point} |" in side.read_text()
    assert "| rephrase | Multi-hop ↓ |" in side.read_text() and (point / "attacks" / "attacks.json").exists()
    original_ppl = next(x["before"] for x in attacked[0] if x["metric"] == "perplexity")
    assert f"| utility | Perplexity (held-out) ↓ | {original_ppl:.2f} |" in side.read_text()
    low = atu("attack", str(out), "--at-forget", "-1", "--attacks", "rephrase")
    assert low.returncode == 2 and "never reaches forget-all <= -1" in low.stderr and "Traceback" not in low.stderr


def _run_with_front(path, stages: dict[str, float], kept: tuple[str, ...] = ()) -> Run:
    """A run folder on disk whose evaluations after 'before' have these forget-all scores, in order; `kept`: the
    stages whose model was saved under points/ (the last stage's model is the run's own)."""
    for folder in [path] + [path / "points" / stage for stage in kept]:
        folder.mkdir(parents=True)
        (folder / "run.json").write_text("{}")
        (folder / "config.yaml").write_text("{}")
    rows = [{"event": "eval", "stage": "before", "forget_all": 20.0}]
    rows += [{"event": "eval", "stage": stage, "forget_all": score} for stage, score in stages.items()]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return Run(path)


def test_matched_forgetting_attacks_only_evaluations_whose_model_was_kept(tmp_path):
    # ATU kept no points: its 15.5 after stage 1 cannot be attacked, so the match is at its end (15.6)
    atu_run = _run_with_front(tmp_path / "atu", {"unlearn1": 15.5, "unlearn2": 15.6})
    ga_run = _run_with_front(tmp_path / "ga", {"unlearn1@10": 13.8, "unlearn1": 11.2}, kept=("unlearn1@10",))
    assert matched_level([atu_run, ga_run]) == 15.6
    at, hit = point_at_forget(atu_run, 15.6)
    assert at.path == atu_run.path and hit == {"stage": "unlearn2", "forget_all": 15.6}
    at, hit = point_at_forget(ga_run, 15.6)
    assert at.path == tmp_path / "ga" / "points" / "unlearn1@10" and hit["forget_all"] == 13.8
    # below every kept model's score: a clear error that names the lowest kept point and the fix
    with pytest.raises(AtuError, match=r"never reaches forget-all <= 15\.55 with a kept model .*15\.60 at unlearn2"):
        point_at_forget(atu_run, 15.55)


def test_attack_on_a_folder_that_is_not_a_run_says_so(tmp_path):
    r = atu("attack", str(tmp_path))
    assert r.returncode == 2 and "is not a run folder" in r.stderr and "Traceback" not in r.stderr
