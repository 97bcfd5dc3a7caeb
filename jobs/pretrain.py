"""The pretrain stage as a Ray job (see raysys/recipes/pretrain.py).

    python jobs/pretrain.py --config jobs/configs/ml100k.yaml --out runs/pretrain
    ray job submit --working-dir . -- python jobs/pretrain.py --config jobs/configs/ml100k.yaml --out runs/pretrain

The same as `raysys pretrain ...`.
"""

from raysys.cli import job_main

if __name__ == "__main__":
    job_main("pretrain")
