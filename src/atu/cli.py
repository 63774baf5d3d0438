"""The `atu` command. Subcommands take Hydra-style `key=value` overrides (see src/atu/config/)."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from .errors import AtuError

HELP = """\
atu: make a language model forget a concept, and measure that it is gone.

  atu unlearn [key=value ...]          unlearn (default: ATU, embedded gemma-3-270m, target Warren Buffett)
  atu unlearn --resume RUN_DIR         continue a killed or failed run from its last checkpoint
  atu report RUN_DIR                   (re)write RUN_DIR/report.html and report.md with plots (run or compare folder)
  atu eval [MODEL] [key=value ...]     score a model (dir, .gguf, hub id, or a run folder) on a target's RWKU probes
  atu targets [--intro] [key=value ...] rank targets by how much the model knows about them
  atu attack RUN_DIR [--attacks quant8,quant4,bnb8,bnb4,relearn,incontext,rephrase,probe,mia] [key=value ...]
                                       is it gone or hidden? robustness table in RUN_DIR/attacks/
  atu compare --methods atu,ga,npo,... [--target NAME ...] [--out DIR] [--attacks quant4,...] [key=value ...]
              [ga:method.lr=1e-5 ...]
                                       several methods, same target/model/data/evaluation: table + trade-off plot
  atu compare --collect SWEEP_DIR      the finished runs under SWEEP_DIR (atu-sweep --multirun) in one table
  atu-sweep --multirun [hydra/launcher=slurm] target=A,B method=atu,ga ...
                                       Hydra multirun sweeps (locally or on SLURM), one run folder per job

Overrides, e.g.: target="Bruce Lee"  model=phi3_mini  model.name_or_path=/path/to/model  method.taus=[0.5,0.4]
                 method.hook_layer=14  run.output_dir=runs/x  data.roots=[/data/RWKU/Target]  run.device=cuda
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub unless the user turns this off
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    signal.signal(signal.SIGTERM, _terminate)  # SLURM preemption / scancel: stop like Ctrl-C, run.json says so
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(HELP)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        if command == "unlearn":
            return _unlearn(rest)
        if command == "eval":
            return _eval(rest)
        if command == "targets":
            return _targets(rest)
        if command == "compare":
            return _compare(rest)
        if command == "attack":
            return _attack(rest)
        if command == "report":
            return _report(rest)
        raise AtuError(f"unknown command {command!r}; use unlearn, eval, targets, compare, attack or report (atu --help)")
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
        parser.add_argument(flag, **({"action": "append"} if kind == "append" else {} if kind else {"action": "store_true"}))
    parser.add_argument("-h", "--help", action="store_true")
    known, overrides = parser.parse_known_args(rest)
    bad = [o for o in overrides if o.startswith("--")]
    if bad:
        raise AtuError(f"unknown option {bad[0]}; options: {', '.join(flags) or 'none'}; settings are key=value")
    return known, overrides


def _unlearn(rest) -> int:
    from pathlib import Path

    from .config import load_config
    from .pipeline import resume_config, unlearn

    args, overrides = _split(rest, {"--resume": True})
    if args.help:
        print(HELP)
        return 0
    if args.resume:
        unlearn(resume_config(Path(args.resume), overrides), resume=True)
    else:
        unlearn(load_config(overrides))
    return 0


def _report(rest) -> int:
    from pathlib import Path

    from .report import write_report

    args, paths = _split(rest, {})
    if args.help or len(paths) != 1:
        print(HELP)
        if not args.help:
            raise AtuError("atu report needs one run or compare folder: atu report runs/<run>")
        return 0
    html = write_report(Path(paths[0]))
    print(html)
    return 0


def _eval(rest) -> int:
    from pathlib import Path

    from .config import load_config, quote
    from .pipeline import evaluate_only

    args, overrides = _split(rest, {"--out": True})
    if args.help:
        print(HELP)
        return 0
    model = run_dir = None
    if overrides and "=" not in overrides[0]:
        model, overrides = overrides[0], overrides[1:]
        if (Path(model) / "run.json").exists():  # a run folder: its target, its saved model (or base + intervention)
            run_dir = Path(model)
            run = json.loads((run_dir / "run.json").read_text())
            overrides = [f"target={quote(run['target'])}"] + overrides
            if (run_dir / "model").is_dir():
                model = str(run_dir / "model")
            else:  # GRUN / ICU leave the base model unchanged: evaluate the base with the run's additions
                from omegaconf import OmegaConf
                model = str(OmegaConf.load(run_dir / "config.yaml").model.name_or_path)
        overrides = [f"model.name_or_path={quote(model)}"] + overrides
    cfg = load_config(overrides)
    result = evaluate_only(cfg, args.out, run_dir)
    from .report import print_table

    print_table([{"stage": Path(str(cfg.model.name_or_path)).name or "model", **result["metrics"]}])
    if "utility" in result:
        from .report import utility_table
        print(utility_table({"score": result["utility"]}))
    return 0


def _targets(rest) -> int:
    from .config import load_config
    from . import data as datalib
    from .evaluate.screen import screen
    from .models import load_lm, pick_device
    from .files import write_json
    from .pipeline import _progress_factory, say

    args, overrides = _split(rest, {"--intro": False, "--out": True, "--top": True})
    if args.help:
        print(HELP)
        return 0
    cfg = load_config(overrides)
    roots = list(cfg.data.roots)
    names = list(datalib.known_targets(roots)) if args.intro else list(datalib.target_folders(roots))
    model, tok = load_lm(cfg.model, pick_device(cfg.run.device))
    say(f"screening {len(names)} targets on {cfg.model.name_or_path}")
    rows = screen(model, tok, names, roots, cfg.eval.batch_size, use_intro=True, progress_factory=_progress_factory())
    if args.out:
        from pathlib import Path
        write_json(Path(args.out), rows)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"What {cfg.model.name_or_path} knows (ROUGE-L recall ×100 on forget probes)")
    for col in ("#", "Target", "Score", "Probes", "From", "Example"):
        table.add_column(col)
    for i, r in enumerate(rows[: int(args.top) if args.top else None]):
        table.add_row(str(i + 1), r["target"], f"{r['score']:.1f}", str(r["n_probes"]), r["source"], r["examples"][0])
    Console().print(table)
    return 0


def _attack(rest) -> int:
    from pathlib import Path

    from omegaconf import OmegaConf

    from .attacks import default_attacks, markdown, run_attacks
    from .config import load_config, quote
    from .pipeline import say

    args, overrides = _split(rest, {"--attacks": True})
    if args.help or not overrides or "=" in overrides[0]:
        print(HELP)
        if not args.help:
            raise AtuError("atu attack needs a finished run folder: atu attack runs/<run> [--attacks quant4,relearn]")
        return 0
    run_dir, overrides = Path(overrides[0]), overrides[1:]
    if not (run_dir / "run.json").exists() or not (run_dir / "config.yaml").exists():
        raise AtuError(f"{run_dir} is not a run folder (no run.json/config.yaml); pass the folder atu unlearn wrote")
    saved = OmegaConf.load(run_dir / "config.yaml")
    # the run's model, encoder, data roots and evaluation settings; the command line may change eval/run settings
    cfg = load_config([f"model.{k}={quote(v) if isinstance(v, str) else v}" for k, v in saved.model.items() if v is not None]
                      + [f"target={quote(saved.target)}", f"data.roots=[{','.join(quote(r) for r in saved.data.roots)}]"]
                      + overrides)
    names = [a.strip() for a in args.attacks.split(",") if a.strip()] if args.attacks else default_attacks()
    rows = run_attacks(run_dir, names, cfg, say)
    print(markdown(rows))
    say(f"robustness table: {run_dir / 'attacks' / 'attacks.md'}")
    return 0


def _compare(rest) -> int:
    import time
    from pathlib import Path

    from .compare import run_all
    from .config import load_config
    from .pipeline import say

    args, overrides = _split(rest, {"--methods": True, "--target": "append", "--out": True, "--attacks": True,
                                    "--collect": True})
    if args.collect:  # the run folders of a sweep (atu-sweep --multirun) into one table and report
        from .compare import collect_folder
        out = Path(args.out or args.collect)
        collect_folder(Path(args.collect), out)
        say(f"table: {out / 'compare.md'}; report: {out / 'report.html'}")
        print((out / "compare.md").read_text())
        return 0
    if args.help or not args.methods:
        print(HELP)
        if not args.help:
            raise AtuError("atu compare needs --methods, e.g. --methods atu,ga,gd,npo,simnpo,dpo,rt,icu,rmu,grun")
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
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
    targets = args.target or [str(load_config(shared).target)]
    out = Path(args.out or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}")
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()] if args.attacks else None
    if attacks:
        from .attacks import ATTACKS
        bad = [a for a in attacks if a not in ATTACKS]
        if bad:
            raise AtuError(f"unknown attack {bad[0]!r}; known: {', '.join(ATTACKS)}")
    run_all(methods, targets, out, shared, per_method, say, attacks)
    say(f"table: {out / 'compare.md'}; plot: {out / 'tradeoff.png'}")
    print((out / "compare.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
