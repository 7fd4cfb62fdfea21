"""Schemathesis hooks for .ci/contract.

`wait_ms` holds a read for up to 30 s when the entity never shows up, which
generated ids never do: capped so that the run tests answers, not waits (the
value still reaches the server, so its parsing and bounds are exercised).
"""

import schemathesis


@schemathesis.hook
def map_query(ctx, query):
    if isinstance(query, dict) and isinstance(query.get("wait_ms"), int) and query["wait_ms"] > 50:
        query["wait_ms"] = 50
    return query
