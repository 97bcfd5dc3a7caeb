"""The A/B analysis as a Ray job (see raysys/recipes/abtest.py).

    python jobs/abtest.py --config runs/serve/config.yaml --out runs/abtest
    ray job submit --working-dir . -- python jobs/abtest.py --config jobs/configs/serve.yaml \
        abtest.event_log=s3://bucket/log --out /abs/runs/abtest

The same as `raysys abtest ...`.
"""

from raysys.cli import job_main

if __name__ == "__main__":
    job_main("abtest")
