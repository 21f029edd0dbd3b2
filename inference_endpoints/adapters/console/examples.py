"""Example requests shown on an endpoint's page, with its real URL and model name filled in.

The key is never printed: every example reads it from `$IE_API_KEY`, so a copied
example runs as soon as the caller has exported their organization key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlsplit

KEY_VAR = "IE_API_KEY"
PROMPT = "A checkpoint becomes an endpoint when"


@dataclass(frozen=True)
class Example:
    key: str  # stable id used by the page and tests
    title: str
    language: str
    code: str


def examples(base_url: str, model: str, max_tokens: int = 32) -> list[Example]:
    """curl, Python `openai` and raw HTTP for a completion at `base_url` (no trailing /v1)."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens}
    body_json = json.dumps(body)
    curl = (
        f"curl -sS {base_url}/v1/completions \\\n"
        f'  -H "Authorization: Bearer ${KEY_VAR}" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        f"  -d '{body_json}'"
    )
    python = (
        "import os\n"
        "from openai import OpenAI\n\n"
        f'client = OpenAI(base_url="{base_url}/v1", api_key=os.environ["{KEY_VAR}"])\n'
        f"completion = client.completions.create(model={model!r}, prompt={PROMPT!r}, "
        f"max_tokens={max_tokens})\n"
        "print(completion.choices[0].text)"
    )
    parts = urlsplit(base_url)
    raw = (
        f"POST {parts.path}/v1/completions HTTP/1.1\n"
        f"Host: {parts.netloc}\n"
        f"Authorization: Bearer <your {KEY_VAR}>\n"
        "Content-Type: application/json\n"
        f"Content-Length: {len(body_json.encode())}\n\n"
        f"{body_json}"
    )
    return [
        Example("curl", "curl", "bash", curl),
        Example("python", "Python (openai)", "python", python),
        Example("http", "Raw HTTP", "http", raw),
    ]
