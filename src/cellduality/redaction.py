"""Keep credentials out of every message and file: ``https://user:pass@host`` and ``?api_key=...``.

API keys are only read from the environment (never flags or files), but a user may still put a
credential inside a server URL. Anything that shows or saves a URL or an error text passes it
through :func:`redact` first.
"""

from __future__ import annotations

import re
from typing import Any

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/@\s]+@")
_SECRET_PARAMS = re.compile(r"(?P<key>[?&;](?:api[_-]?key|key|token|access_token|secret|password|pwd|sig|signature)=)[^&;#\s]+",
                            re.IGNORECASE)
_BEARER = re.compile(r"(?P<key>\bBearer\s+)[A-Za-z0-9._\-~+/]+=*", re.IGNORECASE)
_OPENAI_KEY = re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}")


def redact(text: Any) -> Any:
    """``text`` with URL credentials, secret query parameters, bearer tokens and ``sk-`` keys masked.

    Non-strings are returned unchanged, so it can be mapped over config values.
    """
    if not isinstance(text, str):
        return text
    text = _USERINFO.sub(r"\g<scheme>***@", text)
    text = _SECRET_PARAMS.sub(r"\g<key>***", text)
    text = _BEARER.sub(r"\g<key>***", text)
    return _OPENAI_KEY.sub("sk-***", text)
