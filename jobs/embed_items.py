"""The embed_items stage as a Ray job (see raysys/recipes/embed_items.py).

    python jobs/embed_items.py --config jobs/configs/quickstart.yaml --out runs/embed
    ray job submit --working-dir . -- python jobs/embed_items.py --config jobs/configs/quickstart.yaml \
        --out /abs/runs/embed

The same as `raysys embed_items ...`.
"""

from raysys.cli import job_main

if __name__ == "__main__":
    job_main("embed_items")
