"""The distill stage as a Ray job (see raysys/recipes/distill.py).

    python jobs/distill.py --config jobs/configs/ml100k.yaml distill.teacher=runs/pretrain/model --out runs/distill
    ray job submit --working-dir . -- \
        python jobs/distill.py --config jobs/configs/ml100k.yaml distill.teacher=runs/pretrain/model --out runs/distill

The same as `raysys distill ...`.
"""

from raysys.cli import job_main

if __name__ == "__main__":
    job_main("distill")
