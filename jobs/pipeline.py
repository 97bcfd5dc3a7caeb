"""The main job as a Ray job (see raysys/recipes/pipeline.py): prepare -> teacher -> [tune] -> student
-> evaluate -> export -> serve smoke -> report, resumable.

    python jobs/pipeline.py --config jobs/configs/quickstart.yaml --out runs/quickstart
    ray job submit --working-dir . -- python jobs/pipeline.py --config jobs/configs/quickstart.yaml \
        --out /abs/runs/quickstart
    ray job submit --working-dir . -- python jobs/pipeline.py --config jobs/configs/ml100k.yaml \
        --out s3://bucket/runs/ml100k

The same as `raysys pipeline ...`. Inside a job, give --out as an absolute path or a URI: the job's
working directory is a temporary copy of this one.
"""

from raysys.cli import job_main

if __name__ == "__main__":
    job_main("pipeline")
