"""Prepare an interaction log into a cached dataset (the `raysys prepare` stage as a job file).

python jobs/prepare.py --config jobs/configs/ml100k.yaml --out runs/ml100k
ray job submit --working-dir . -- python jobs/prepare.py --config jobs/configs/quickstart.yaml
"""

from raysys.cli import job_main

if __name__ == "__main__":
    job_main("prepare")
