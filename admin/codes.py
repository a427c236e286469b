"""The values the admin API documents: error codes, phases and judge states, with what they mean.

admin/openapi.py puts them in the OpenAPI document (and so in docs/admin-api.md); tests check that
the API answers only with these.
"""

from __future__ import annotations

# Error codes (error.code) and what they mean; admin/api.py maps every failure to one of them.
ERROR_CODES = {
    "invalid_json": "400: the body is not JSON",
    "invalid_body": "400: the body is not a JSON object",
    "missing_field": "400: a required field is missing",
    "invalid_field": "400: a field has the wrong type or value (or is unknown)",
    "invalid_if_match": "400: If-Match is not a generation",
    "invalid_query": "400: a query parameter is invalid",
    "invalid_request": "400: the request is valid JSON but not a valid change (e.g. ramp steps)",
    "invalid_payload": "400: an Alertmanager webhook payload that is not version 4",
    "unauthorized": "401: no bearer token, or a wrong one",
    "forbidden": "403: the token's role (viewer) may only read",
    "unknown_slot": "404: no slot of that name",
    "not_found": "404: no such endpoint",
    "method_not_allowed": "405: the endpoint does not take this method (Allow lists the ones it does)",
    "refused": "409: refused in this state; `reasons` says why (a failing gate, a slot that failed analysis "
    "and was neither redeployed nor forced, no ramp in progress, a deploy to a slot taking traffic)",
    "generation_mismatch": "412: If-Match names a generation that is no longer current; nothing changed",
    "request_entity_too_large": "413: the body is too large",
    "state_store_unavailable": "503: fleet mode: the shared state store cannot be reached; nothing changed",
    "internal_error": "500: a bug; the proxy's log has the details",
}
PHASES = {
    "stable": "one slot takes all new traffic",
    "switching": "stable, while the slot switched away from still drains",
    "ramping": "a ramp shares new traffic between the active slot and the ramp's target",
    "paused": "a ramp held at its step by an operator",
    "rolled_back": "the last change was a rollback to the stable slot; a second rollback changes nothing",
}
JUDGE_STATES = {
    "judging": "a ramp, or the bake after a switch (a rollback included), is being judged",
    "inconclusive": "judging, but the verdicts are inconclusive (too little data) since `since`; "
    "`on_inconclusive` says what follows (hold: the ramp does not advance)",
    "passed": "the bake of `slot` ended with a passing verdict",
    "failed": "`slot` failed analysis and was rolled back (and is marked failed)",
    "not_watching": "no ramp, and no switch within the bake time (analysis.watch_after_switch)",
}


def listing(values: dict[str, str]) -> str:
    return "; ".join(f"`{k}`: {v}" for k, v in values.items())
