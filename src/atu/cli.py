"""The `atu` command: a table of subcommands, each a function of its arguments. Settings are Hydra-style `key=value`
overrides (see src/atu/config/).

Each command imports what it needs when it runs (the imports below the table), so `atu --help` and a bad command
answer at once instead of after loading torch and transformers.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from .environment import offline_and_quiet
from .errors import AtuError

HELP = """\
atu: make a language model forget a concept, and measure that it is gone.

  atu unlearn [key=value ...]          unlearn (default: ATU, embedded gemma-3-270m, target Cindy Crawford)
  atu unlearn --resume RUN_DIR         continue a killed or failed run from its last checkpoint
  atu report RUN_DIR                   (re)write RUN_DIR/report.html and report.md with plots (run or compare folder)
  atu eval [MODEL] [key=value ...]     score a model (dir, .gguf, hub id, or a run folder) on a target's RWKU probes
  atu targets [--set celebs-1] [--out FILE] [--names] [key=value ...]
                                       rank targets by how much the model knows (resumes from --out)
  atu attack RUN_DIR [--attacks quant8,quant4,bnb8,bnb4,relearn,incontext,rephrase,probe,mia,utility] [key=value ...]
                                       is it gone or hidden? robustness table in RUN_DIR/attacks/
  atu attack RUN_A RUN_B [--at-forget X] [--out FILE]
                                       both attacked where their fronts reach the same forget-all (the deepest
                                       both reach, or X; earlier points need eval.save_points=true), side by side
  atu compare --methods atu,ga,npo,... [--target NAME ...] [--seeds N] [--out DIR] [--attacks quant4,...]
              [key=value ...] [ga:method.lr=1e-5 ...]
                                       several methods, same target/model/data/evaluation: table + trade-off plot
                                       (--seeds N: seeds 0..N-1, mean ± sd per target and over all)
  atu compare --collect SWEEP_DIR      the finished runs under SWEEP_DIR (atu-sweep --multirun) in one table
  atu settings [method=NAME]           every setting with its default and what it does
  atu-sweep --multirun [hydra/launcher=slurm] target=A,B method=atu,ga ...
                                       Hydra multirun sweeps (locally or on SLURM), one run folder per job

Overrides, e.g.: target="Bruce Lee"  model=phi3_mini  model.name_or_path=/path/to/model  method.taus=[0.5,0.4]
                 method.hook_layer=14  run.output_dir=runs/x  data.roots=[/data/RWKU/Target]  run.device=cuda
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    offline_and_quiet()
    signal.signal(signal.SIGTERM, _terminate)  # SLURM preemption / scancel: stop like Ctrl-C, run.json says so
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(HELP)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        if command not in COMMANDS:
            raise AtuError(f"unknown command {command!r}; use {', '.join(COMMANDS)} (atu --help)")
        return COMMANDS[command](rest)
    except AtuError as e:
        print(f"atu: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("atu: interrupted", file=sys.stderr)
        return 130


def _terminate(signum, frame):
    raise KeyboardInterrupt


def _split(rest: list[str], flags: dict[str, bool | str]):
    """Separate our --flags (True: takes a value, False: boolean, "append": repeatable) from Hydra overrides."""
    parser = argparse.ArgumentParser(add_help=False)
    for flag, kind in flags.items():
        parser.add_argument(
            flag, **({"action": "append"} if kind == "append" else {} if kind else {"action": "store_true"})
        )
    parser.add_argument("-h", "--help", action="store_true")
    known, overrides = parser.parse_known_args(rest)
    bad = [o for o in overrides if o.startswith("--")]
    if bad:
        raise AtuError(f"unknown option {bad[0]}; options: {', '.join(flags) or 'none'}; settings are key=value")
    return known, overrides


def _names(text: str | None) -> list[str] | None:
    return [a.strip() for a in text.split(",") if a.strip()] if text else None


def unlearn(rest) -> int:
    from .config import load_config
    from .pipeline import resume_config, unlearn as run_unlearn

    args, overrides = _split(rest, {"--resume": True})
    if args.help:
        return _help()
    run_unlearn(
        resume_config(Path(args.resume), overrides) if args.resume else load_config(overrides),
        resume=bool(args.resume),
    )
    return 0


def report(rest) -> int:
    from .compare import rewrite_report
    from .report import write_run_report
    from .runs import COMPARE, Run

    args, paths = _split(rest, {})
    if args.help or len(paths) != 1:
        if not args.help:
            raise AtuError("atu report needs one run or compare folder: atu report runs/<run>")
        return _help()
    folder = Path(paths[0])
    if Run(folder).is_run():
        print(write_run_report(Run(folder)))
    elif (folder / COMPARE[1]).exists():
        print(rewrite_report(folder))
    else:
        raise AtuError(
            f"{folder} is neither a run folder (run.json, config.yaml) nor a compare folder (compare.csv); "
            "pass a folder atu unlearn or atu compare wrote"
        )
    return 0


def evaluate(rest) -> int:
    from .config import from_run, load_config, quote
    from .console import print_table
    from .pipeline import evaluate_only
    from .report import kind_table, utility_table
    from .runs import Run

    args, overrides = _split(rest, {"--out": True})
    if args.help:
        return _help()
    run = None
    if overrides and "=" not in overrides[0]:
        model, overrides = overrides[0], overrides[1:]
        if Run(model).is_run():  # a run folder: its target and settings, its model as its method rebuilds it
            run = Run(model)
            cfg = from_run(run, overrides)
        else:
            cfg = load_config([f"model.name_or_path={quote(model)}"] + overrides)
    else:
        cfg = load_config(overrides)
    result = evaluate_only(cfg, args.out, run)
    row = {"stage": Path(str(run.model_dir if run else cfg.model.name_or_path)).name or "model", **result["metrics"]}
    print_table([row])
    m = result["metrics"]
    print(f"prompt: {m.get('prompt')}; scorer: {m.get('scorer')}; retain targets: {m.get('retain_targets', 'none')}")
    for kind, title in (("aa_type", "Forget AA per attack type"), ("mia", "RWKU's MIA"), ("answers", "Answer types")):
        table = kind_table([row], kind)
        if table is not None:
            print(f"\n{title}:\n\n{table.markdown()}")
    if "utility" in result:
        print(utility_table({"score": result["utility"]}).markdown())
    return 0


def targets(rest) -> int:
    from rich.console import Console
    from rich.table import Table

    from . import data as datalib
    from .config import load_config, quote
    from .console import say
    from .evaluate import prompt_shots
    from .evaluate.screen import screen
    from .models import load_lm, pick_device
    from .runs import read_json_or, write_json

    args, overrides = _split(rest, {"--out": True, "--top": True, "--set": "append", "--names": False})
    if args.help:
        return _help()
    cfg = load_config(overrides)
    roots = list(cfg.data.roots)
    names = datalib.expand_targets(args.set) if args.set else list(datalib.target_folders(roots))
    if args.names:  # for a multirun sweep: atu-sweep --multirun "target=$(atu targets --set celebs-1 --names)"
        print(",".join(quote(n) for n in names))
        return 0
    model, tok = load_lm(cfg.model, pick_device(cfg.run.device))
    shots = prompt_shots(cfg.eval, tok)
    setting = {"model": str(cfg.model.name_or_path), "shots": shots, "scorer": cfg.eval.scorer}
    saved = read_json_or(Path(args.out), {}) if args.out else {}
    rows = saved.get("targets", []) if saved.get("settings") == setting else []  # a finished part is kept
    todo = [n for n in names if n not in {r["target"] for r in rows}]
    say(
        f"screening {len(todo)} targets on {cfg.model.name_or_path} ({len(rows)} already in {args.out})"
        if rows
        else f"screening {len(todo)} targets on {cfg.model.name_or_path}"
    )

    total = len(rows) + len(todo)

    def done(row):
        rows.append(row)
        say(f"[{len(rows)}/{total}] {row['target']}: {row['score']:.1f}")
        if args.out:
            write_json(Path(args.out), {"settings": setting, "targets": rows})

    screen(model, tok, todo, roots, cfg.eval.batch_size, shots, cfg.eval.scorer, done)
    rows.sort(key=lambda r: -r["score"])
    table = Table(title=f"What {cfg.model.name_or_path} knows: forget FB/QA, ROUGE-L recall ×100 ({cfg.eval.scorer})")
    for col in ("#", "Target", "Known", "FB", "QA", "Probes", "Off-format %", "Example"):
        table.add_column(col)
    for i, r in enumerate(rows[: int(args.top) if args.top else None]):
        table.add_row(
            str(i + 1),
            r["target"],
            f"{r['score']:.1f}",
            f"{r.get('forget_fb', 0):.1f}",
            f"{r.get('forget_qa', 0):.1f}",
            str(r["n_probes"]),
            f"{r['off_format']:.0f}",
            r["examples"][0],
        )
    Console().print(table)
    return 0


def attack(rest) -> int:
    from .attacks import default_attacks, matched_level, point_at_forget, run_attacks
    from .config import from_run
    from .console import say
    from .report import attack_table, matched_attack_table
    from .runs import Run, write_text

    args, rest = _split(rest, {"--attacks": True, "--at-forget": True, "--out": True})
    folders = [Run(a).require() for a in rest if "=" not in a]
    overrides = [a for a in rest if "=" in a]
    if args.help or not folders:
        if not args.help:
            raise AtuError("atu attack needs a finished run folder: atu attack runs/<run> [--attacks quant4,relearn]")
        return _help()
    names = _names(args.attacks) or default_attacks()
    # two runs or --at-forget: attack each where its front reaches the same forget-all
    level = _number(args.at_forget, "--at-forget") if args.at_forget else None
    if level is None and len(folders) > 1:
        level = matched_level(folders)
    results, shared = {}, {}  # shared: the original model and its attacked scores, computed once for all runs
    for run in folders:
        target, point = point_at_forget(run, level) if level is not None else (run, None)
        if point is not None:
            say(f"{run}: attacking {point['stage']} (forget-all {point['forget_all']:.2f} <= {level:g}) in {target}")
        cfg = from_run(target, overrides)  # the run's model, data and evaluation; the command line may change them
        rows = run_attacks(target, names, cfg, shared)
        print(attack_table(rows).markdown())
        say(f"robustness table: {target / 'attacks' / 'attacks.md'}")
        attacked = [r for r in rows if r["attack"] in names]
        results[str(run)] = (run.evals()[0], point or target.evals()[-1], attacked)
    if len(folders) > 1:
        table = matched_attack_table(results).markdown()
        print(f"\nAt matched forgetting (forget-all <= {level:g}):\n{table}")
        if args.out:
            write_text(Path(args.out), f"At matched forgetting (forget-all <= {level:g})\n\n{table}\n")
            say(f"side-by-side table: {args.out}")
    return 0


def _number(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise AtuError(f"{flag} takes a number (a forget-all score, e.g. {flag} 5), not {text!r}") from None


def compare(rest) -> int:
    from . import data as datalib
    from .compare import collect_folder, run_all
    from .config import load_config
    from .console import say

    args, overrides = _split(
        rest,
        {
            "--methods": True,
            "--target": "append",
            "--out": True,
            "--attacks": True,
            "--collect": True,
            "--seeds": True,
        },
    )
    if args.collect:  # the run folders of a sweep (atu-sweep --multirun) into one table and report
        out = Path(args.out or args.collect)
        collect_folder(Path(args.collect), out)
        say(f"table: {out / 'compare.md'}; report: {out / 'report.html'}")
        print((out / "compare.md").read_text())
        return 0
    if args.help or not args.methods:
        if not args.help:
            raise AtuError("atu compare needs --methods, e.g. --methods atu,ga,gd,npo,simnpo,dpo,rt,icu,rmu,grun")
        return _help()
    methods = _names(args.methods)
    per_method: dict[str, list[str]] = {}
    shared = []
    for o in overrides:
        head, sep, tail = o.partition(":")
        if sep and "=" not in head and head in methods:
            per_method.setdefault(head, []).append(tail)
        elif sep and "=" not in head:
            raise AtuError(f"override {o!r} names method {head!r}, which is not in --methods {','.join(methods)}")
        else:
            shared.append(o)
    targets = datalib.expand_targets(args.target) if args.target else [str(load_config(shared).target)]
    out = Path(args.out or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}")
    seeds = int(args.seeds) if args.seeds and args.seeds.isdigit() and int(args.seeds) > 0 else None
    if args.seeds and seeds is None:
        raise AtuError(f"--seeds {args.seeds}: give a whole number of seeds, e.g. --seeds 2")
    run_all(methods, targets, out, shared, per_method, _names(args.attacks), seeds or 1)
    say(f"table: {out / 'compare.md'}; plot: {out / 'tradeoff.png'}")
    print((out / "compare.md").read_text())
    return 0


def settings(rest) -> int:
    from .config import SECTIONS, load_config
    from .methods import get_method
    from .settings import describe

    args, overrides = _split(rest, {})
    if args.help:
        return _help()
    cfg = load_config(overrides)
    schemas = dict(SECTIONS) | {"method": get_method(cfg.method.name).Config}
    for section, schema in schemas.items():
        print(f"{section}:" + (f"  ({cfg.method.name})" if section == "method" else ""))
        for name, default, text in describe(schema):
            print(
                f"  {section}.{name} = {cfg[section][name]!r}"
                + (f"   # {text}" if text else "")
                + (f" (default {default!r})" if cfg[section][name] != default and name != "name" else "")
            )
    return 0


def _help() -> int:
    print(HELP)
    return 0


COMMANDS = {
    "unlearn": unlearn,
    "eval": evaluate,
    "targets": targets,
    "compare": compare,
    "attack": attack,
    "report": report,
    "settings": settings,
}


if __name__ == "__main__":
    sys.exit(main())
