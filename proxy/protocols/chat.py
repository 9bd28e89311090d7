"""Chat requests mapped onto a backend protocol's own request body.

The AI SDK's chat transports (``useChat``) POST ``{"id": CHAT_ID, "messages": [{"role", "parts":
[{"type": "text", "text"}, ...]}, ...], "trigger", "messageId"}``; a flow runtime expects its own
body. For a backend protocol listed in :data:`MAPPERS` such a request is rewritten before it is
forwarded; any other body (and any body for another protocol) goes to the backend as sent.

- A *chat request* is a JSON object with a ``messages`` key and none of the keys the backend's own
  body is recognised by (for Langflow, ``input_value``): a body already in the backend's shape is
  never rewritten.
- The input is the text of the **last** message whose ``role`` is ``"user"``: its ``text`` parts
  joined with a newline (AI SDK 5+), or its ``content`` string (the AI SDK 4 message shape). The
  history stays with the backend's own session (Langflow keeps it per ``session_id``).
- A chat request without such a message, or with ``messages`` that are not a list of objects, is
  a 400 (:class:`ChatRequestError`): the client sent a chat it cannot have meant.

To map chats for another backend protocol, write a function ``(Chat) -> dict`` and add it to
:data:`MAPPERS` (with the keys that mark its native body in :data:`NATIVE_KEYS`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

JSON = "application/json"


class ChatRequestError(ValueError):
    """A chat request whose messages hold no input the backend could be given."""


@dataclass(frozen=True, slots=True)
class Chat:
    chat_id: str | None  # the SDK's chat id (stable across a conversation's messages)
    text: str  # the last user message's text


def to_langflow(chat: Chat) -> dict[str, Any]:
    """Langflow's run body (``/api/v1/run/{flow}``): the message as a chat input, the chat's id as
    the session, so Langflow's own memory carries the conversation."""
    body: dict[str, Any] = {"input_value": chat.text, "input_type": "chat", "output_type": "chat"}
    if chat.chat_id is not None:
        body["session_id"] = chat.chat_id
    return body


MAPPERS: dict[str, Callable[[Chat], dict[str, Any]]] = {"langflow": to_langflow}
NATIVE_KEYS: dict[str, tuple[str, ...]] = {"langflow": ("input_value",)}


def backend_body(protocol: str, body: bytes) -> bytes | None:
    """The body to forward instead of ``body`` (a JSON object for ``application/json``), or None
    when it goes as sent. Raises :class:`ChatRequestError` for a chat request without input."""
    mapper = MAPPERS.get(protocol)
    if mapper is None or not body or b"messages" not in body:
        return None  # the common case costs no JSON parse
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as err:  # not JSON: not a chat request, the backend judges it
        obj = _lenient_json(body) if "surrogate" in str(err) else None
    if not isinstance(obj, dict) or "messages" not in obj:
        return None
    if any(key in obj for key in NATIVE_KEYS.get(protocol, ())):
        return None
    chat = parse_chat(obj)
    try:
        return orjson.dumps(mapper(chat))
    except orjson.JSONEncodeError:  # a lone surrogate (only _lenient_json lets one in)
        return orjson.dumps(mapper(Chat(_whole(chat.chat_id), _whole(chat.text))))  # type: ignore[arg-type]


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _lenient_json(body: bytes) -> Any:
    """The body by the stdlib's parser, or None. A browser's ``JSON.stringify`` writes a string's
    lone surrogate (half an emoji cut off) as a ``\\udXXX`` escape, which JSON's grammar allows
    and orjson refuses; such a chat is still the user's chat. Only for what orjson refused for a
    surrogate: any other refusal is final, without a second (~10x slower) parse of up to
    ``max_body_bytes``."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _whole(s: str | None) -> str | None:
    """``s`` with each lone surrogate replaced by U+FFFD (what a UTF-8 body can carry)."""
    return None if s is None else _LONE_SURROGATE.sub("\ufffd", s)


def parse_chat(obj: dict[str, Any]) -> Chat:
    messages = obj["messages"]
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ChatRequestError("messages must be a list of {role, parts} objects")
    chat_id = obj.get("id")
    if chat_id is not None and not isinstance(chat_id, str):
        raise ChatRequestError("id (the chat id) must be a string")
    for message in reversed(messages):
        if message.get("role") == "user":
            text = message_text(message)
            if text is None:
                raise ChatRequestError("the last user message has no text part")
            return Chat(chat_id or None, text)
    raise ChatRequestError("messages hold no user message")


def message_text(message: dict[str, Any]) -> str | None:
    """A message's text: its ``text`` parts joined with a newline, else its ``content`` string;
    None when it has neither (or only empty text)."""
    parts = message.get("parts")
    if isinstance(parts, list):
        texts = [p["text"] for p in parts
                 if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)]
        text = "\n".join(t for t in texts if t)
        if text:
            return text
    content = message.get("content")
    if isinstance(content, str) and content:
        return content
    return None
