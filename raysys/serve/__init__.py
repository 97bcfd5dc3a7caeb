"""Online serving with Ray Serve: the FastAPI app (app.py), request/response schemas, batch scoring,
the live event/item store shared by replicas, metrics, and declarative deployment (deploy.py)."""
