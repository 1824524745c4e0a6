"""The approvers' web console: server-rendered pages over the service layer (service/console.py).

    routes.py     the pages and decisions, HTML or JSON (Accept: application/json)
    sessions.py   sign-in sessions: opaque ids in an HttpOnly cookie, hashes in the database
    identity.py   who may sign in: personal tokens (never an agent's) and their scopes
    oidc.py       single sign-on through the configured OIDC issuer (authorization code + PKCE)
    standalone.py `refund-mcp console`: the console alone on loopback
"""
