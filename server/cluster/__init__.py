"""`promptswap serve-cluster`: N engine replicas behind one ingress on Ray Serve, routed by task.

`ingress.py` answers HTTP and picks a replica (Ray Serve model multiplexing, keyed by task); `engine_replica.py`
is one full promptswap server in-process; `asgi_call.py` drives that server's ASGI app for one forwarded request;
`metrics_merge.py` labels every replica's exposition; `cluster_app.py` binds the application and runs it.
Importing this package needs `ray[serve]` (the optional extra `cluster`).
"""
