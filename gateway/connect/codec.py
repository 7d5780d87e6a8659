"""Request bodies to the bytes a plugin reads, and its answers back, as JSON or binary protobuf.

Binary bodies are already the method's wire format: they pass as they are (the plugin checks them, as
it does for gRPC-Web). JSON is parsed with the method's message class. Unknown fields are ignored, as
connect-go's JSON codec does (a client may be newer than the plugin); everything else that does not fit
the schema (bad JSON, a wrong type, an enum name that does not exist) is INVALID_ARGUMENT with the
parser's message, which names the field. Answers are written with proto JSON names (lowerCamelCase).
"""

from __future__ import annotations

import json

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from gateway.errors import BadRequest, GatewayError

__all__ = ["JSON", "PROTO", "Codec", "codec_named"]


class Codec:
    def __init__(self, name: str) -> None:
        self.name = name

    def request(self, body: bytes, message: type[Message]) -> bytes:
        """The wire bytes of the request message that `body` encodes."""
        if self.name == "proto":
            return body
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("the JSON body is not UTF-8") from None
        if not text.strip():
            return b""  # an empty body is the empty message, as for binary
        try:
            parsed = json_format.Parse(text, message(), ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise BadRequest(f"invalid {message.DESCRIPTOR.full_name}: {_short(exc)}") from None
        except (ValueError, TypeError) as exc:  # a lone surrogate in a string, say: not a ParseError
            raise BadRequest(f"invalid {message.DESCRIPTOR.full_name}: {_short(exc)}") from None
        return parsed.SerializeToString()

    def response(self, data: bytes, message: type[Message]) -> bytes:
        """`data` (the plugin's wire bytes) in this codec."""
        if self.name == "proto":
            return data
        try:
            parsed = message.FromString(data)
        except DecodeError:
            raise GatewayError(f"the plugin's answer is not a valid {message.DESCRIPTOR.full_name}") from None
        return json.dumps(json_format.MessageToDict(parsed), separators=(",", ":")).encode()


JSON = Codec("json")
PROTO = Codec("proto")
_CODECS = {"json": JSON, "proto": PROTO}


def codec_named(name: str) -> Codec | None:
    return _CODECS.get(name)


def _short(exc: Exception) -> str:
    # The parser's message names the field and what was wrong; it can quote a whole long value.
    message = str(exc)
    return message if len(message) <= 300 else message[:297] + "..."
