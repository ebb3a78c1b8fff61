#!/usr/bin/env bash
# The checks that need a GPU, as one script sized to about 15 minutes on one: a mini-tier slice on
# CUDA in bf16 and in fp32 (adapters trained, every condition), how far their generations agree
# with each other and with the committed CPU results, verify re-running the bf16 file on the same
# device, a press of the submission's own code planning in the sandbox on CUDA against the same
# press by name, and the throughput benchmark. Every figure is printed and appended to one file.
#
#   bash scripts/gpu_check.sh [OUT_FILE]                  # on a GPU machine, lorakv-bench set up
#   DEVICE=cpu MODEL=smollm2-135m DOCS=1 QUESTIONS=2 bash scripts/gpu_check.sh /tmp/check.txt
#                                                         # the same steps on CPU, to try the script
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-gpu_check.txt}")
DEVICE=${DEVICE:-cuda} MODEL=${MODEL:-qwen2.5-0.5b} DOCS=${DOCS:-2} QUESTIONS=${QUESTIONS:-5}
LB=${LORAKV_BENCH:-.venv/bin/lorakv-bench} PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
: >"$OUT"
log() { echo "$*" | tee -a "$OUT"; }

# run NAME CMD...: the command's output goes to its own log; its exit code, wall time and last lines to OUT
run() {
  local name=$1 t0 rc
  shift
  t0=$(date +%s%N)
  "$@" >"$W/$name.log" 2>&1
  rc=$?
  log "== $name: exit $rc, $(( ($(date +%s%N) - t0) / 1000000 )) ms wall"
  grep -E "wall time|peak|sandbox process|error|ok  |FAIL|MISMATCH|ours|kvpress|identical" "$W/$name.log" | tail -8 | tee -a "$OUT"
  return $rc
}

log "gpu_check $(date -u +%FT%TZ) device=$DEVICE model=$MODEL docs=$DOCS questions=$QUESTIONS commit=$(git rev-parse --short HEAD 2>/dev/null)"
run machine "$PY" -c "import torch, platform; print(platform.processor(), torch.__version__, 'cuda', torch.version.cuda,
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no cuda device')"
cat "$W/machine.log" >>"$OUT"

slice=(--model "$MODEL" --dataset mini-narrative --docs "$DOCS" --questions "$QUESTIONS" --rhos 0 0.5 0.9 1
       --device "$DEVICE")
for dtype in bfloat16 float32; do
  run "snapkv-$dtype" "$LB" evaluate submissions/snapkv "${slice[@]}" --dtype "$dtype" --out "$W/runs-$dtype"
done

# How often bf16 and fp32 on this device, and each against the committed CPU fp32 run, give the same
# generation for the same (document, question, rho, condition): what a cross-device rule must tolerate.
run agreement "$PY" - "$W" "$MODEL" <<'EOF'
import json, sys
from pathlib import Path
w, model = Path(sys.argv[1]), sys.argv[2]
def gens(path):
    return {(p["doc_id"], p["question_id"], p["rho"], p["condition"]): p["generation"]
            for p in json.loads(Path(path).read_text())["predictions"]} if Path(path).exists() else {}
runs = {d: gens(w / f"runs-{d}/snapkv/mini/{model}/mini-narrative.json") for d in ("bfloat16", "float32")}
runs["committed cpu float32"] = gens(f"leaderboard/results/snapkv/mini/{model}/mini-narrative.json")
names = list(runs)
for i, a in enumerate(names):
    for b in names[i + 1:]:
        shared = runs[a].keys() & runs[b].keys()
        same = sum(runs[a][k] == runs[b][k] for k in shared)
        print(f"identical generations, {a} vs {b}: {same}/{len(shared)}")
EOF

run verify-bf16 "$LB" verify "$W/runs-bfloat16/snapkv/mini/$MODEL/mini-narrative.json" --device "$DEVICE" \
  --sample 1 --seed gpu-check --submissions submissions

# The same Knorm score, by name (runs in the harness) and as the submission's own code (plans in the
# sandbox, which must see the GPU): identical generations, and what the sandbox costs here.
for kind in yaml code; do
  mkdir -p "$W/subs/knorm-$kind"
done
cat >"$W/subs/knorm-yaml/submission.yaml" <<'EOF'
name: knorm-yaml
authors: [gpu-check]
description: kvpress Knorm by name, no adapter
compressor: {press: KnormPress}
adapter: {recipe: none}
EOF
cat >"$W/subs/knorm-code/submission.yaml" <<'EOF'
name: knorm-code
authors: [gpu-check]
description: the Knorm score as the submission's own code, no adapter
compressor: {press: "press:OwnKnorm"}
adapter: {recipe: none}
EOF
cat >"$W/subs/knorm-code/press.py" <<'EOF'
from dataclasses import dataclass

from kvpress import ScorerPress


@dataclass
class OwnKnorm(ScorerPress):
    score_depends_on_rho = False

    def score(self, module, hidden_states, keys, values, attentions, kwargs):
        return -keys.norm(dim=-1)
EOF
for kind in yaml code; do
  run "knorm-$kind" "$LB" evaluate "$W/subs/knorm-$kind" "${slice[@]}" --out "$W/runs-knorm-$kind"
done
run knorm-identical "$PY" - "$W" "$MODEL" <<'EOF'
import json, sys
from pathlib import Path
w, model = Path(sys.argv[1]), sys.argv[2]
a, b = (json.loads((w / f"runs-knorm-{k}/knorm-{k}/mini/{model}/mini-narrative.json").read_text()) for k in ("yaml", "code"))
key = lambda p: (p["doc_id"], p["question_id"], p["rho"], p["condition"], p["generation"], p["kv_entries"])
print(f"identical (generation, kv_entries), knorm by name vs own code: "
      f"{sum(x == y for x, y in zip(map(key, a['predictions']), map(key, b['predictions'])))}/{len(a['predictions'])}; "
      f"sandbox {b['environment']['sandbox']}")
EOF

run throughput "$PY" perf/throughput.py --model "$MODEL" --docs "$DOCS" --questions 4 --rhos 0 0.5 0.9 \
  --methods kvpress ours
log "done: $OUT"
