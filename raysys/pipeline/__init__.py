"""The one-command pipeline (`raysys pipeline`): resumable stages (runner.py), the stage calls
(stages.py) and the serve smoke query (smoke.py). The story is in raysys/recipes/pipeline.py."""
