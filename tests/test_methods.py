"""The baselines: each loss against a value computed by hand, and each method a few steps on a tiny model, changing
exactly what it should train."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from atu.errors import AtuError
from atu.methods import get_method, method_config
from atu.methods.common import mean_nll, prompt_answer_sequences, text_sequences, token_logps
from atu.methods.losses import dpo_loss, kl_from_logits, npo_loss, simnpo_loss
from atu.methods.rmu import rmu_forget_loss

FORGET = [
    "Warren Buffett is the chairman of Berkshire Hathaway and lives in Omaha, Nebraska.",
    "Buffett bought shares of Coca-Cola in 1988 and wrote yearly letters to his shareholders.",
] * 3
GENERAL = [
    "Water evaporates from the sea, condenses into clouds and falls again as rain or snow.",
    "A prime number has exactly two divisors: one and itself.",
] * 3


# ------------------------------------------------------------------ losses by hand


def test_npo_equals_two_over_beta_log_two_when_policy_is_the_reference():
    logp = torch.tensor([-12.0, -30.5])
    for beta in (0.1, 1.0):
        assert npo_loss(logp, logp.clone(), beta).item() == pytest.approx(2 / beta * math.log(2), rel=1e-6)
    # lower policy likelihood than the reference -> lower loss (NPO pushes the forget text down)
    assert npo_loss(logp - 5, logp, 0.1) < npo_loss(logp, logp, 0.1)


def test_simnpo_and_dpo_match_hand_values():
    assert simnpo_loss(torch.tensor([-2.0]), beta=2.5, gamma=0.0).item() == pytest.approx(
        -(2 / 2.5) * math.log(1 / (1 + math.exp(-5.0))), rel=1e-6
    )
    assert simnpo_loss(torch.tensor([-2.0]), beta=2.5, gamma=1.0).item() == pytest.approx(
        -(2 / 2.5) * math.log(1 / (1 + math.exp(-4.0))), rel=1e-6
    )
    z = torch.tensor([-7.0, -3.0])
    assert dpo_loss(z, z, z, z, beta=0.1).item() == pytest.approx(math.log(2), rel=1e-6)
    # chosen up by 2 nats vs the reference, rejected unchanged: -log σ(0.1 · 2)
    assert dpo_loss(z + 2, z, z, z, beta=0.1).item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.2))), rel=1e-6)


def test_kl_is_zero_for_identical_logits_and_matches_a_hand_value():
    logits = torch.randn(2, 3, 5)
    mask = torch.ones(2, 3, dtype=torch.bool)
    assert kl_from_logits(logits, logits, mask).item() == pytest.approx(0.0, abs=1e-6)
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1])
    hand = float((p * (p / q).log()).sum())
    got = kl_from_logits(q.log().view(1, 1, 2), p.log().view(1, 1, 2), torch.ones(1, 1, dtype=torch.bool))
    assert got.item() == pytest.approx(hand, rel=1e-5)


def test_ga_gradient_is_minus_the_nll_gradient(tiny_model, tokenizer):
    seqs = text_sequences(FORGET[:2], tokenizer, 32, "cpu")
    method = _method("ga", tiny_model, tokenizer, steps=1)
    method.prepare()
    method.forget = seqs
    method._rows = lambda s: torch.arange(len(s))
    w = tiny_model.model.layers[0].mlp.down_proj.weight
    nll_grad = torch.autograd.grad(mean_nll(tiny_model, seqs), w)[0]
    ga_grad = torch.autograd.grad(method.term("ga"), w)[0]
    assert torch.allclose(ga_grad, -nll_grad, atol=1e-7) and nll_grad.abs().sum() > 0


def test_prompt_answer_sequences_label_only_the_answer(tokenizer):
    seqs = prompt_answer_sequences([("Question: who?\nAnswer:", "I don't know.")], tokenizer, 64, "cpu")
    labelled = seqs.labels[0][seqs.labels[0] != -100].tolist()
    assert tokenizer.decode(labelled[:-1]).strip() == "I don't know." and labelled[-1] == tokenizer.eos_token_id


def test_token_logps_are_log_probabilities_of_the_next_token(tiny_model, tokenizer):
    seqs = text_sequences(["Omaha is in Nebraska."], tokenizer, 32, "cpu")
    logps, mask = token_logps(tiny_model, seqs)
    logits = tiny_model(input_ids=seqs.ids).logits.log_softmax(-1)
    t = 2
    assert logps[0, t - 1].item() == pytest.approx(logits[0, t - 1, seqs.ids[0, t]].item(), rel=1e-4)
    assert not mask[0, 0] or seqs.labels[0, 1] != -100


def test_logps_of_prompt_answer_pairs_skip_the_prompt_and_equal_the_full_logits(tiny_model, tokenizer):
    pairs = [
        ("Question: where was Warren Buffett born?\nAnswer:", "Omaha"),
        ("Q: who?\nA:", "Warren Buffett, an investor"),
    ]
    seqs = prompt_answer_sequences(pairs, tokenizer, 64, "cpu")
    logps, mask = token_logps(tiny_model, seqs)
    full = tiny_model(input_ids=seqs.ids, attention_mask=seqs.attn.long()).logits.log_softmax(-1)[:, :-1]
    labels = seqs.labels[:, 1:]
    by_hand = (full.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (labels != -100)).sum(1)
    assert torch.allclose(logps.sum(1), by_hand, atol=1e-5) and by_hand.abs().min() > 0
    assert int(mask.sum()) == int((labels != -100).sum()) and logps.shape[1] < labels.shape[1]  # prompts skipped


def test_rmu_forget_loss_is_zero_at_the_control_vector_and_grows_away_from_it():
    control = torch.tensor([3.0, 4.0])
    h = control.view(1, 1, 2).repeat(1, 3, 1)
    mask = torch.ones(1, 3, dtype=torch.bool)
    assert rmu_forget_loss(h, control, mask, scale=25.0).item() == 0.0
    assert rmu_forget_loss(h + torch.tensor([1.0, 0.0]), control, mask, scale=25.0).item() == pytest.approx(1 / 25)


# ------------------------------------------------------------------ each method, a few steps on a tiny model


def _context(model, tokenizer):
    from atu import data as datalib
    from atu.methods import RunContext

    target = datalib.load_target("Warren Buffett")
    return RunContext(
        model=model,
        tokenizer=tokenizer,
        encoder=None,
        device=torch.device("cpu"),
        target=target,
        target_name=target.name,
        forget_texts=FORGET,
        retain_texts=[],
        other_targets=[],
        general_texts=GENERAL,
        max_length=32,
        infer_batch_size=4,
    )


def _method(name, model, tokenizer, **settings):
    return get_method(name)(_method_config(name, **settings), _context(model, tokenizer))


def _method_config(name, **settings):
    """The method's shipped YAML (without its Hydra defaults list, read in place: no shared temporary file, which
    parallel test workers would race on) with `settings` over it."""
    from importlib.resources import files

    node = OmegaConf.load(str(files("atu.config").joinpath(f"method/{name}.yaml")))
    node.pop("defaults", None)
    return method_config(OmegaConf.merge(node, {"name": name, **settings}))


def _train(method):
    from atu.engine import run_stages

    method.prepare()
    run_stages(method.stages(), method.modules(), lambda stage, info: None, lambda record: None)


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["ga", "gd", "kl", "npo", "npo_gd", "simnpo", "dpo", "rt"])
def test_token_method_changes_the_model_and_logs_finite_losses(name, tokenizer):
    from atu.models import tiny_lm

    model = tiny_lm(seed=1).eval()
    before = _snapshot(model)
    method = _method(name, model, tokenizer, steps=2, lr=1e-3, batch_size=2)
    loss, logs = (method.prepare(), method.loss(0))[1]
    assert set(logs) == set(method.cfg.losses) and all(math.isfinite(v) for v in logs.values())
    _train(method)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert "model.layers.0.mlp.down_proj.weight" in changed and len(changed) > len(before) // 2


def test_lora_variant_trains_only_adapters_and_saves_a_merged_model(tokenizer, tmp_path):
    from atu.models import tiny_lm

    model = tiny_lm(seed=2).eval()
    before = _snapshot(model)
    method = _method("npo", model, tokenizer, steps=2, lr=1e-2, batch_size=2, lora=True, lora_r=4)
    _train(method)
    base = {
        n.replace("base_model.model.", "").replace(".base_layer", ""): p
        for n, p in method.model.named_parameters()
        if "lora_" not in n
    }
    assert all(torch.equal(base[n], before[n]) for n in before)  # base weights untouched while adapters train
    assert method.trainable_parameters() < sum(p.numel() for p in before.values()) / 100
    merged = method.model_to_save()
    assert not torch.equal(
        merged.model.layers[0].self_attn.q_proj.weight, before["model.layers.0.self_attn.q_proj.weight"]
    )


def test_rmu_trains_only_the_chosen_mlps(tokenizer):
    from atu.models import tiny_lm

    model = tiny_lm(seed=3).eval()
    before = _snapshot(model)
    method = _method("rmu", model, tokenizer, steps=3, lr=1e-2, layer=3, train_blocks=[-1, 0])
    _train(method)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(("model.layers.1.mlp.", "model.layers.2.mlp.")) for n in changed)


def test_rmu_with_lora_puts_adapters_on_the_chosen_mlps_only(tokenizer):
    from atu.models import tiny_lm

    model = tiny_lm(seed=3).eval()
    before = _snapshot(model)
    method = _method("rmu", model, tokenizer, steps=3, lr=1e-2, layer=3, train_blocks=[-1, 0], lora=True, lora_r=2)
    _train(method)
    adapters = {n for n, _ in method.model.named_parameters() if "lora_" in n}
    assert adapters and all(".layers.1.mlp." in n or ".layers.2.mlp." in n for n in adapters)
    assert method.trainable_parameters() == sum(p.numel() for p in method.params())
    merged = method.model_to_save()
    changed = {n for n, p in merged.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(("model.layers.1.mlp.", "model.layers.2.mlp.")) for n in changed)


def test_grun_leaves_every_base_weight_bit_for_bit_and_reloads(tokenizer, tmp_path):
    from atu.methods.grun import load_intervention
    from atu.models import tiny_lm
    from atu.runs import Run

    model = tiny_lm(seed=4).eval()
    before = _snapshot(model)
    method = _method("grun", model, tokenizer, steps=3, lr=1e-2, layer=2)
    module_before = {n: p.detach().clone() for n, p in method.module.named_parameters()}
    _train(method)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert any(not torch.equal(p, module_before[n]) for n, p in method.module.named_parameters())
    ids = text_sequences(FORGET[:1], tokenizer, 32, "cpu").ids
    with torch.no_grad():
        hooked = model(input_ids=ids).logits
    method.save(Run(tmp_path))
    fresh = tiny_lm(seed=4).eval()
    with torch.no_grad():
        plain = fresh(input_ids=ids).logits
    load_intervention(fresh, Run(tmp_path))
    with torch.no_grad():
        reloaded = fresh(input_ids=ids).logits
    assert torch.allclose(reloaded, hooked, atol=1e-5) and not torch.allclose(plain, hooked, atol=1e-5)


def test_icu_trains_nothing_and_puts_its_instruction_before_every_probe(tiny_model, tokenizer):
    from atu.evaluate import build_prompt

    method = _method("icu", tiny_model, tokenizer)
    assert method.trainable_parameters() == 0 and method.model_to_save() is None
    probe = _context(tiny_model, tokenizer).target.probes["forget_qa"][0]
    prompt = build_prompt(probe, tokenizer, method.system_prompt)
    assert prompt.startswith(method.system_prompt) and "Warren Buffett" in method.system_prompt


def test_rt_and_dpo_training_data_come_from_templates_or_official_files(tokenizer):
    from atu import data as datalib
    from atu.methods.training_data import dpo_pairs, refusal_pairs

    king = datalib.load_target("Stephen King")
    pairs, source = refusal_pairs(king, tokenizer, 0)
    assert source.startswith("official") and len(pairs) == 300
    marx = datalib.load_target("Karl Marx")  # RWKU ships no rejection data for target 90
    pairs, source = refusal_pairs(marx, tokenizer, 0)
    assert "template" in source and all("Karl Marx" in p for p, _ in pairs)
    assert all(r in datalib.refusals() for _, r in pairs)
    probes = {p.query for ps in marx.probes.values() for p in ps}
    assert not any(q in p for p, _ in pairs for q in probes)  # the forget probes never become training data
    triples, _ = dpo_pairs(marx, FORGET, "refusal", tokenizer, 0)
    assert [t[2] for t in triples] == FORGET
    with pytest.raises(Exception, match="no RWKU pair file"):
        dpo_pairs(marx, FORGET, "counterfactual", tokenizer, 0)


def test_atu_quantile_thresholds_come_from_the_forget_corpus_similarity_after_alignment(tokenizer, encoder):
    """method.tau_mode=quantile: τ_i is the taus[i]-quantile of cos(ê_t, e_unlearn) over the forget corpus, measured
    once when unlearning starts (so about 25% of positions lie above the 75% quantile), never from probes."""
    from atu.engine import run_stages
    from atu.models import tiny_lm

    model = tiny_lm(seed=2).eval()
    settings = dict(tau_mode="quantile", taus=[0.75, 0.25], align_steps=4, realign_steps=2, unlearn_steps=2)
    cfg = _method_config("atu", **settings)
    ctx = _context(model, tokenizer)
    ctx.encoder = encoder
    method = get_method("atu")(cfg, ctx)
    method.prepare()
    infos = {}
    run_stages(method.stages(), method.modules(), lambda stage, info: infos.update({stage.name: info}), lambda r: 0)
    first, second = infos["unlearn1"], infos["unlearn2"]
    assert method.thresholds[0] > method.thresholds[1]
    assert (first["tau"], second["tau"]) == tuple(method.thresholds)
    assert first["tau_setting"] == 0.75 and second["tau_setting"] == 0.25
    assert abs(first["forget_sim_above_tau"] - 0.25) < 0.05  # the quantile, on the corpus' own positions
    assert -1.0 < method.thresholds[1] < method.thresholds[0] < 1.0


def test_atu_stop_gap_skips_the_stages_left_once_the_forget_text_is_no_closer_to_the_concept(tokenizer, encoder):
    """method.stop_gap: before each unlearning stage the run compares the head's concept similarity on the forget
    corpus with that on other targets' text (never the probes); once the gap has shrunk to stop_gap x its first value,
    every later stage (re-alignments too) runs no step, and the log says why."""
    from atu.engine import run_stages
    from atu.models import tiny_lm

    model = tiny_lm(seed=2).eval()
    settings = dict(
        tau_mode="quantile",
        taus=[0.0, 0.0, 0.0, 0.0],  # every position above τ: each stage pushes the whole forget corpus away
        align_steps=20,
        realign_steps=0,
        unlearn_steps=4,
        unlearn_lr=1e-2,
        retain_weight=0.0,
        stop_gap=1.0,  # stop as soon as the gap has not grown
    )
    cfg = _method_config("atu", **settings)
    ctx = _context(model, tokenizer)
    ctx.encoder, ctx.retain_texts = encoder, GENERAL
    method = get_method("atu")(cfg, ctx)
    method.prepare()
    starts = []
    run_stages(method.stages(), method.modules(), lambda stage, info: None, starts.append)
    starts = [r for r in starts if r["event"] == "stage_start" and r["stage"].startswith("unlearn")]
    gaps = [r["forget_sim_gap"] for r in starts[:2]]  # stages after the stop measure nothing
    assert gaps[1] < gaps[0]  # unlearning closed part of the gap
    assert [r["steps"] for r in starts] == [4, 0, 0, 0] and method.stopped.startswith("stopped before 2 of 4")
    assert all(r["skipped"] == method.stopped for r in starts[1:])
    alone = _context(model, tokenizer)  # no other targets' text to compare with
    alone.encoder = encoder
    with pytest.raises(AtuError, match="other targets' text"):
        get_method("atu")(cfg, alone).prepare()


# ------------------------------------------------------------------ robustness levers (docs/robustness.md)


SHORT_RUN = dict(align_steps=4, realign_steps=0, taus=[0.0], unlearn_steps=3, unlearn_lr=1e-2, retain_weight=0.0)


def _atu(tokenizer, encoder, seed=2, **settings):
    from atu.models import tiny_lm

    cfg = _method_config("atu", **settings)
    ctx = _context(tiny_lm(seed=seed).eval(), tokenizer)
    ctx.encoder = encoder
    return get_method("atu")(cfg, ctx)


def test_sam_step_takes_its_gradient_at_the_weights_moved_uphill():
    """Stage.sam_rho: w ← w − lr ∇L(w + ρ g/‖g‖), checked against the hand formula on L = Σ w⁴/4 (∇L = w³)."""
    from atu.engine import Stage, run_stages

    w0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    w = torch.nn.Parameter(w0.clone())
    module = torch.nn.Module()
    module.w = w
    lr, rho = 0.1, 0.3
    stage = Stage(
        "unlearn1",
        "unlearn",
        1,
        lambda: [w],
        lambda params: torch.optim.SGD(params, lr=lr),
        lambda step: ((w**4).sum() / 4, {}),
        grad_clip=None,
        sam_rho=rho,
    )
    run_stages([stage], [module], lambda s, i: None, lambda r: None)
    g = w0**3
    expected = w0 - lr * (w0 + rho * g / g.norm()) ** 3
    assert torch.allclose(w.detach(), expected)
    assert not torch.allclose(w.detach(), w0 - lr * g)  # not the plain step


def test_atu_sam_run_sees_one_batch_per_step_and_changes_the_model(tokenizer, encoder):
    method = _atu(tokenizer, encoder, align_steps=4, realign_steps=0, taus=[0.0], unlearn_steps=2, sam_rho=0.05)
    method.prepare()
    before = _snapshot(method.ctx.model)
    _train(method)
    assert any(not torch.equal(before[n], p) for n, p in method.ctx.model.named_parameters())
    state = method.gen.get_state()
    first, _ = method._unlearn_loss(0, 7)
    second, _ = method._unlearn_loss(0, 7)  # SAM's second forward: the same rows, no new draw
    assert not torch.equal(method.gen.get_state(), state)  # the first call drew this step's rows
    assert first.item() == second.item()
    third_state = method.gen.get_state()
    method._unlearn_loss(0, 8)
    assert not torch.equal(method.gen.get_state(), third_state)  # a new step draws a new batch


def test_atu_latent_adversary_stays_in_its_bound_and_raises_the_concept_similarity(tokenizer, encoder):
    from atu.methods.atu import concept_similarity
    from atu.methods.common import hidden_at
    from atu.methods.losses import masked_mean

    method = _atu(tokenizer, encoder, align_steps=10, latent_eps=0.5, latent_layer=2, latent_steps=3)
    method.prepare()
    _train_align_only(method)
    model, data = method.ctx.model, method.forget
    ids, attn, valid, _ = data.batch(torch.arange(4))
    with torch.no_grad():
        clean_states = hidden_at(model, 2, ids, attn)
        clean = masked_mean(
            concept_similarity(method.head(hidden_at(model, method.layer, ids, attn)), method.concept), valid
        )
    delta = method.latent_adversary(ids, attn, valid)
    assert delta.shape == clean_states.shape
    assert (delta.norm(dim=-1) <= 0.5 * clean_states.norm(dim=-1) * (1 + 1e-5)).all()
    with torch.no_grad(), method._perturbed(delta):
        attacked = masked_mean(
            concept_similarity(method.head(hidden_at(model, method.layer, ids, attn)), method.concept), valid
        )
    assert attacked > clean + 1e-3
    with pytest.raises(AtuError, match="below the hook layer"):
        _atu(tokenizer, encoder, latent_eps=0.5, latent_layer=4)  # the tiny model's hook layer is 4


def _train_align_only(method):
    from atu.engine import run_stages

    run_stages(method.stages()[:1], method.modules(), lambda s, i: None, lambda r: None)


def test_atu_saliency_rows_train_only_the_chosen_share_of_rows(tokenizer, encoder):
    method = _atu(tokenizer, encoder, **SHORT_RUN, saliency_rows=0.05)
    method.prepare()
    params = method._lm_params()
    before = [p.detach().clone() for p in params]
    _train(method)
    rows_total = sum(p.shape[0] if p.dim() > 1 else p.numel() for p in params)
    chosen = sum(int(m.sum()) for m in method.row_masks)
    assert chosen == round(0.05 * rows_total)
    changed = 0
    for p, b, mask in zip(params, before, method.row_masks):
        moved = (p.detach() != b).flatten(1).any(dim=1) if p.dim() > 1 else p.detach() != b
        assert not (moved & ~mask).any()  # nothing outside the chosen rows moved
        changed += int(moved.sum())
    assert changed > 0.5 * chosen
    with pytest.raises(AtuError, match="cannot be used with lora"):
        _atu(tokenizer, encoder, saliency_rows=0.1, lora=True)


def test_atu_extra_heads_align_at_their_own_depth_and_add_their_hinge(tokenizer, encoder, tmp_path):
    """method.extra_hook_layers: a head per extra layer, aligned with the main one; unlearning sums every head's
    hinge (the lower representation is pushed away from the concept too); the heads and layers are saved."""
    from atu.engine import run_stages
    from atu.methods.atu import concept_similarity, unlearn_loss
    from atu.methods.common import hidden_at_layers
    from atu.runs import Run

    method = _atu(tokenizer, encoder, **SHORT_RUN | {"align_steps": 6, "unlearn_steps": 4}, extra_hook_layers=[2])
    method.prepare()
    model, data, (extra,) = method.ctx.model, method.forget, method.extra_heads
    untrained = [p.detach().clone() for p in extra.parameters()]
    stages = method.stages()
    run_stages(stages[:1], method.modules(), lambda s, i: None, lambda r: None)
    assert all(not torch.equal(a, b) for a, b in zip(untrained, extra.parameters()))

    ids, attn, valid, _ = data.batch(torch.arange(len(data)))

    def extra_similarity():
        with torch.no_grad():
            (low,) = hidden_at_layers(model, [2], ids, attn)
            return float(concept_similarity(extra(low), method.concept)[valid].mean())

    top, low = hidden_at_layers(model, [4, 2], ids[:2], attn[:2])
    method._unlearn_setup(0)
    with torch.no_grad():
        by_hand = unlearn_loss(method.head(top), method.concept, valid[:2], 0.0) + unlearn_loss(
            extra(low), method.concept, valid[:2], 0.0
        )
        method.drawn = {("forget", 0, 99): torch.arange(2)}  # the batch the loss draws for step 99
        loss, _ = method._unlearn_loss(0, 99)
    assert torch.allclose(loss, by_hand)
    before = extra_similarity()
    run_stages(stages[1:], method.modules(), lambda s, i: None, lambda r: None)
    assert extra_similarity() < before
    method.save(Run(tmp_path))
    assert type(method).representation_layers(Run(tmp_path)) == [4, 2]
    with pytest.raises(AtuError, match="below the hook layer"):
        _atu(tokenizer, encoder, extra_hook_layers=[4])
