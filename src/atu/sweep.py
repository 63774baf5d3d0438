"""`atu-sweep`: `atu unlearn` as a Hydra application, so Hydra's multirun sweeps and launchers (SLURM via submitit)
work as in any Hydra project:

    atu-sweep --multirun target="Stephen King","Bruce Lee" method=atu,ga method.taus=[0.4,0.3],[0.3]
    atu-sweep --multirun hydra/launcher=slurm hydra.launcher.partition=gpu target="Stephen King","Bruce Lee"
    atu compare --collect runs/sweep-<time>

`atu unlearn` stays the plain command (compose API: no working-folder changes, no Hydra logging); this entry point
differs only in launching. A failed job prints its one-line error and the sweep goes on with the others."""

from __future__ import annotations

import sys

from .environment import offline_and_quiet

# before hydra, torch and the Hugging Face libraries are imported (they read the environment then), and at import:
# a launcher's worker (submitit on SLURM) imports this module and calls `job` without running `main`
offline_and_quiet()

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from .config import _register, check  # noqa: E402
from .errors import AtuError  # noqa: E402
from .methods import method_config  # noqa: E402
from .pipeline import resumable, resume_config, unlearn  # noqa: E402
from .runs import Run  # noqa: E402

_register()


@hydra.main(config_path="config", config_name="sweep", version_base=None)
def job(cfg: DictConfig) -> int:
    try:
        cfg.method = method_config(cfg.method)
        OmegaConf.resolve(cfg)  # the run folder name comes from hydra: interpolations, resolved inside the job
        check(cfg)
        run = Run(cfg.run.output_dir)
        if run.status() == "done":  # a re-launched sweep keeps finished jobs
            print(f"[atu] {run} is already done; kept", file=sys.stderr)
        elif resumable(run, cfg):  # requeued after a time-out or preemption: continue
            unlearn(resume_config(run.path, []), resume=True)
        else:
            unlearn(cfg)
    except AtuError as e:
        print(f"atu: error: {e}", file=sys.stderr)
        return 2
    return 0


def main() -> None:
    job()


if __name__ == "__main__":
    main()
