"""The update as a Ray job (see raysys/recipes/update.py).

    python jobs/update.py --config jobs/configs/ml100k.yaml update.base_run=runs/ml100k \
        update.event_log=runs/serve/event_log --out runs/update-1
    ray job submit --working-dir . -- python jobs/update.py --config jobs/configs/ml100k.yaml \
        update.base_run=/abs/runs/ml100k update.event_log=/abs/runs/serve/event_log update.serve_app=raysys \
        --out /abs/runs/update-1

The same as `raysys update ...`.
"""

from raysys.cli import job_main

if __name__ == "__main__":
    job_main("update")
