"""The finetune stage as a Ray job (see raysys/recipes/finetune.py).

    python jobs/finetune.py --config jobs/configs/ml100k.yaml finetune.init_from=runs/pretrain/model --out runs/finetune
    ray job submit --working-dir . -- python jobs/finetune.py --config jobs/configs/ml100k.yaml \
        finetune.init_from=/abs/runs/pretrain/model --out /abs/runs/finetune

The same as `raysys finetune ...`.
"""

from raysys.cli import job_main

if __name__ == "__main__":
    job_main("finetune")
