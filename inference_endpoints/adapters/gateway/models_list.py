"""`GET /v1/models` through the gateway: vLLM's model list without host paths. Pure.

vLLM sets each model card's `root` to the path it loaded the model from (and a
LoRA adapter's to the adapter's path); callers only need the served names. `root`
becomes the card's own id; `parent` is kept only when it names another served
model (a LoRA endpoint lists `<name>` with parent `<name>-base`).
"""

from __future__ import annotations

import json
from typing import Any

MODELS_PATH = b"/v1/models"
MAX_MODELS_BODY = 1024 * 1024  # a model list is a few hundred bytes; bigger is not rewritten


def is_models_request(method: str, path: bytes) -> bool:
    """`path`: the upstream path with its query, as the proxy sends it."""
    if method != "GET" or not path.startswith(MODELS_PATH):
        return False
    rest = path[len(MODELS_PATH):]
    return not rest or rest[:1] in (b"?", b"/")


def _scrub_card(card: dict[str, Any], served: set[str]) -> None:
    if "id" in card:
        card["root"] = card["id"]
    else:
        card.pop("root", None)
    parent = card.get("parent")
    if parent is not None and parent not in served:
        card["parent"] = None


def scrub(body: bytes) -> bytes | None:
    """The rewritten list (or single card); None when `body` is not one (then send nothing)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    data = payload.get("data")
    if isinstance(data, list):
        cards = [card for card in data if isinstance(card, dict)]
        if len(cards) != len(data):
            return None
        served = {str(card["id"]) for card in cards if "id" in card}
        for card in cards:
            _scrub_card(card, served)
    elif payload.get("object") == "model":
        _scrub_card(payload, set())
    else:
        return None
    return json.dumps(payload).encode()
