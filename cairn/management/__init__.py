"""
The management REST API: a Klein app on its own listener, its OpenAPI
document, bearer-token resolution and the node's Prometheus metrics.
"""
