"""The bearer token for servers that require one (vLLM --api-key, a centre's shared endpoint).

Read from OPENAI_API_KEY, as OpenAI's clients and vLLM's benchmark read it; never written to any record.
"""

from __future__ import annotations

import os

API_KEY_ENV = "OPENAI_API_KEY"


def auth_headers() -> dict[str, str]:
    key = os.environ.get(API_KEY_ENV, "").strip()
    return {"Authorization": f"Bearer {key}"} if key else {}
