"""Money as integer minor units plus an ISO 4217 currency.

Exponents come from Babel's CLDR data (a maintained source), never from a hand list:
JPY has 0 decimals, USD 2, KWD 3.
"""

from __future__ import annotations

import functools
import re
from decimal import Decimal, InvalidOperation

from refund_mcp.domain.errors import ValidationFailed

_CURRENCY_SHAPE = re.compile(r"^[A-Z]{3}$")

# Largest amount any processor here accepts (Adyen's int64 `value`); anything larger is a typo or an attack.
MAX_AMOUNT_MINOR = 2**53 - 1


@functools.cache
def _known_currencies() -> frozenset[str]:
    from babel.numbers import list_currencies  # lazy: Babel's data load is the slowest import at start

    return frozenset(list_currencies())


def normalize_currency(code: str) -> str:
    """Return the upper-case ISO 4217 code; raises ValidationFailed for anything else."""
    if not isinstance(code, str):
        raise ValidationFailed("currency must be a 3-letter ISO 4217 code", fields=["currency"])
    upper = code.strip().upper()
    if not _CURRENCY_SHAPE.match(upper) or upper not in _known_currencies():
        raise ValidationFailed(f"currency {code[:8]!r} is not an ISO 4217 code", fields=["currency"])
    return upper


@functools.cache
def currency_exponent(currency: str) -> int:
    """Number of minor-unit digits of an ISO 4217 currency (CLDR data via Babel)."""
    from babel.numbers import get_currency_precision

    return int(get_currency_precision(normalize_currency(currency)))


def to_decimal_string(amount_minor: int, currency: str) -> str:
    """Minor units to the decimal string processors such as PayPal expect ("10.00", "1500", "1.250")."""
    exponent = currency_exponent(currency)
    sign = "-" if amount_minor < 0 else ""
    digits = str(abs(amount_minor))
    if exponent == 0:
        return sign + digits
    digits = digits.rjust(exponent + 1, "0")
    return f"{sign}{digits[:-exponent]}.{digits[-exponent:]}"


def from_decimal_string(value: str, currency: str) -> int:
    """Parse a processor's decimal string into minor units, refusing precision the currency lacks."""
    exponent = currency_exponent(currency)
    try:
        parsed = Decimal(value)
    except (InvalidOperation, TypeError) as exc:
        raise ValidationFailed(f"amount {value!r} is not a decimal number", fields=["amount"]) from exc
    scaled = parsed.scaleb(exponent)
    if scaled != scaled.to_integral_value():
        raise ValidationFailed(f"amount {value!r} has more decimals than {currency} allows", fields=["amount"])
    return int(scaled)


def format_display(amount_minor: int, currency: str) -> str:
    """Human display string a model cannot mis-scale: "USD 29.99", "JPY 1500", "KWD 1.250"."""
    return f"{currency} {to_decimal_string(amount_minor, currency)}"
