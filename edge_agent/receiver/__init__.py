"""The reference edge server: the seed's `POST /cid`, `POST /ingest/ldo` and `GET /ingest/list`.

For field tests and integrators. It shares only the wire contract (`edge_agent.delivery.contract`) with
the agent. FastAPI and uvicorn are the optional extra `receiver`: `pip install 'cid-edge-agent[receiver]'`.
"""
