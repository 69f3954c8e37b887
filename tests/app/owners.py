"""Who a gradio_client script is to the studio (studio.sessions.owner_of): its Client's
session, one Client one owner; a script that sends a secret of its own (the last argument of
an endpoint) is that browser owner instead, also after a restart."""

from __future__ import annotations

from types import SimpleNamespace


def client_owner(client) -> str:
    """The owner id the studio gives a gradio_client script that sends no secret."""
    from studio.sessions import owner_of

    return owner_of(None, SimpleNamespace(session_hash=client.session_hash))
