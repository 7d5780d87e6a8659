"""One place where a signed token's claims are checked with pyjwt, and its refusals put in words.

The gateway's verifier and the auth plugin's providers (custom, OIDC) pick the key their own way,
then all call `decode_claims`, so a token is judged, and its refusal worded, the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jwt
from jwt.types import Options

__all__ = ["TokenRejected", "decode_claims"]


class TokenRejected(Exception):
    """The token is not valid; `reason` says why, in words safe to show its bearer."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_claims(
    token: str,
    key: Any,
    *,
    algorithm: str,
    audience: str | Sequence[str],
    issuer: str,
    leeway: float = 0.0,
    require: Sequence[str] = ("exp", "sub"),
    verify_times: bool = True,
) -> dict[str, Any]:
    """The verified claims. `key` is a PyJWK or a public key; `algorithm` is the only one accepted
    (pinned by the caller, never read from the token). With verify_times=False, exp / nbf / iat are
    left to the caller (who has a clock of its own)."""
    options: Options = {
        "require": list(require),
        "verify_exp": verify_times,
        "verify_nbf": verify_times,
        "verify_iat": verify_times,
    }
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience=audience if isinstance(audience, str) else list(audience),
            issuer=issuer,
            leeway=leeway,
            options=options,
        )
    except jwt.ExpiredSignatureError:
        raise TokenRejected("the token has expired") from None
    except jwt.ImmatureSignatureError:
        raise TokenRejected("the token is not valid yet") from None
    except jwt.InvalidAudienceError:
        raise TokenRejected("the token is not meant for this audience") from None
    except jwt.InvalidIssuerError:
        raise TokenRejected("the token's issuer is not trusted") from None
    except jwt.InvalidSignatureError:
        raise TokenRejected("the token's signature does not verify") from None
    except jwt.MissingRequiredClaimError as error:
        raise TokenRejected(f"the token has no {error.claim} claim") from None
    except jwt.PyJWTError:
        raise TokenRejected("the token is malformed") from None
    return claims
