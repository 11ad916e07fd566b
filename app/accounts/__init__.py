"""Accounts: users and their passwords, API tokens, sign-in limits, and who may act on what.

Identity is decided at the web layer's door (a session for pages, a bearer token for the
API); inward, the services see only an `Actor`. The queue, the execution module and the
trainer never know about users.
"""
