"""The `atu` command. Subcommands take Hydra-style `key=value` overrides (see src/atu/config/)."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import AtuError

HELP = """\
atu: make a language model forget a concept, and measure that it is gone.

  atu unlearn [key=value ...]          unlearn (default: ATU, embedded gemma-3-270m, target Warren Buffett)
  atu eval [MODEL] [key=value ...]     score a model (dir, .gguf, hub id, or a run folder) on a target's RWKU probes
  atu targets [--intro] [key=value ...] rank targets by how much the model knows about them

Overrides, e.g.: target="Bruce Lee"  model=phi3_mini  model.name_or_path=/path/to/model  method.taus=[0.5,0.4]
                 method.hook_layer=14  run.output_dir=runs/x  data.roots=[/data/RWKU/Target]  run.device=cuda
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub unless the user turns this off
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
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
        raise AtuError(f"unknown command {command!r}; use unlearn, eval or targets (atu --help)")
    except AtuError as e:
        print(f"atu: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("atu: interrupted", file=sys.stderr)
        return 130


def _split(rest: list[str], flags: dict[str, bool]):
    """Separate our --flags (value or boolean) from Hydra overrides."""
    parser = argparse.ArgumentParser(add_help=False)
    for flag, takes_value in flags.items():
        parser.add_argument(flag, **({} if takes_value else {"action": "store_true"}))
    parser.add_argument("-h", "--help", action="store_true")
    known, overrides = parser.parse_known_args(rest)
    bad = [o for o in overrides if o.startswith("--")]
    if bad:
        raise AtuError(f"unknown option {bad[0]}; options: {', '.join(flags) or 'none'}; settings are key=value")
    return known, overrides


def _unlearn(rest) -> int:
    from .config import load_config
    from .pipeline import unlearn

    args, overrides = _split(rest, {})
    if args.help:
        print(HELP)
        return 0
    unlearn(load_config(overrides))
    return 0


def _eval(rest) -> int:
    from pathlib import Path

    from .config import load_config
    from .pipeline import evaluate_only

    args, overrides = _split(rest, {"--out": True})
    if args.help:
        print(HELP)
        return 0
    model = None
    if overrides and "=" not in overrides[0]:
        model, overrides = overrides[0], overrides[1:]
        if (Path(model) / "run.json").exists():  # a run folder: its saved model and its target
            run = json.loads((Path(model) / "run.json").read_text())
            overrides = [f"target={run['target']}"] + overrides
            model = str(Path(model) / "model")
        overrides = [f"model.name_or_path={model}"] + overrides
    cfg = load_config(overrides)
    result = evaluate_only(cfg, args.out)
    from .report import print_table

    print_table([{"stage": Path(str(cfg.model.name_or_path)).name or "model", **result["metrics"]}])
    return 0


def _targets(rest) -> int:
    from .config import load_config
    from . import data as datalib
    from .evaluate.screen import screen
    from .models import load_lm, pick_device
    from .pipeline import _progress_factory, say, write_json

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


if __name__ == "__main__":
    sys.exit(main())
