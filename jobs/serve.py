"""Serve a model directory over HTTP with Ray Serve (the `raysys serve` stage as a job file).

    python jobs/serve.py --model runs/distill/model --port 8000
    ray job submit --working-dir . -- python jobs/serve.py --model runs/distill/model serve.num_replicas=2

It stays in the foreground until Ctrl-C (`ray job stop` sends SIGTERM, handled the same way). For a
long-lived deployment managed by the cluster, use `serve deploy jobs/configs/serve.yaml` instead.
"""

from raysys.cli import job_main

if __name__ == "__main__":
    job_main("serve")
