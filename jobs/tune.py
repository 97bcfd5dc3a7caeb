"""The tune stage as a Ray job (see raysys/recipes/tune.py).

    python jobs/tune.py --config jobs/configs/tune_ml100k.yaml distill.teacher=runs/pretrain/model --out runs/tune
    ray job submit --working-dir . -- \
        python jobs/tune.py --config jobs/configs/tune_ml100k.yaml distill.teacher=runs/pretrain/model --out runs/tune

The same as `raysys tune ...`; re-running it with the same --out resumes the search.
"""

from raysys.cli import job_main

if __name__ == "__main__":
    job_main("tune")
