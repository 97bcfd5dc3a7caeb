"""Evaluate a baseline or a model directory (full ranking: valid, test and test slices).

    python jobs/evaluate.py --config jobs/configs/ml100k.yaml --baseline popularity --out runs/pop
    ray job submit --working-dir . -- python jobs/evaluate.py --config jobs/configs/ml100k.yaml \
        --model runs/distill/model --fuse popularity --num-workers 2 --out runs/eval

The same as `raysys evaluate ...` (see raysys/recipes/evaluate.py).
"""

from raysys.cli import job_main

if __name__ == "__main__":
    job_main("evaluate")
