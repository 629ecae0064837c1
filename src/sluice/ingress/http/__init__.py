"""The HTTP API: a bare ASGI app, its schema, authentication, admission control and OpenAPI
document.
"""
