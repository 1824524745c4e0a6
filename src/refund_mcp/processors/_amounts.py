"""Amounts on the wire: each processor's own decimals per currency, and the one conversion.

refund-mcp counts money in minor units of Babel's (CLDR) exponent for the currency
(`domain.money.currency_exponent`): JPY 0, USD 2, KWD 3, HUF 0, ISK 0, TWD 2. Processors do not
all agree with that, nor with ISO 4217: Stripe writes ISK, UGX and HUF with two decimals, Adyen
writes CLP and ISK with two and CVE and IDR with none, PayPal takes no decimals for HUF, JPY and
TWD. Each adapter declares its processor's table once, as an `AmountScale`; `to_wire` and
`from_wire` convert exactly, and refuse what cannot be represented instead of rounding:

- an amount the processor cannot take (Stripe KWD not a multiple of 10 thousandths, PayPal TWD with
  cents) is `[validation_error]`, raised before anything is sent;
- an amount a processor answers that refund-mcp cannot hold (a fractional ISK from Stripe) or an
  answer without a money field is `IncompleteAnswer`, which the adapter turns into
  `[processor_error]` (or an unknown outcome after a create): never 0, never rounded.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from refund_mcp.domain.errors import ValidationFailed
from refund_mcp.domain.money import currency_exponent, format_display

# ISO 4217 minor units, where they are not 2 (ISO 4217 list one; funds and metals left out).
ISO_4217_DECIMALS: Mapping[str, int] = {
    **dict.fromkeys(
        ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF"),
        0,
    ),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
}


def iso_decimals(currency: str) -> int:
    return ISO_4217_DECIMALS.get(currency, 2)


class IncompleteAnswer(ValueError):
    """A processor's answer lacks a money field, or carries an amount refund-mcp cannot hold exactly."""


class Default(enum.Enum):
    """Decimals of a currency the processor's table does not name."""

    TWO = "two"  # the processor documents every other currency as two-decimal (Stripe)
    ISO = "iso"  # the processor documents ISO 4217 minor units (Square, PayPal)
    TWO_IF_ISO_AGREES = "two_if_iso_agrees"  # "most are two" (Adyen): trusted only where ISO says 2 too


@dataclass(frozen=True, slots=True)
class AmountScale:
    processor: str
    decimals: Mapping[str, int]  # the processor's own table, where it differs from `default`
    default: Default
    wire_multiple: Mapping[str, int] = field(default_factory=dict)  # e.g. Stripe KWD: last digit 0
    source: str = ""  # where the table comes from, quoted in refusals

    def decimals_of(self, currency: str) -> int:
        """The processor's decimals for `currency`; ValidationFailed when they are not known."""
        if currency in self.decimals:
            return self.decimals[currency]
        iso = iso_decimals(currency)
        if self.default is Default.ISO:
            return iso
        if self.default is Default.TWO or iso == 2:
            return 2
        raise ValidationFailed(
            f"refund-mcp does not know how many decimals {self.processor} uses for {currency} "
            f"({self.source or 'its currency table'} does not list it) and will not guess an amount",
            fields=["currency"],
        )

    def to_wire(self, amount_minor: int, currency: str) -> int:
        """Our minor units to the processor's integer amount. ValidationFailed when not representable."""
        ours, theirs = currency_exponent(currency), self.decimals_of(currency)
        if theirs >= ours:
            wire = amount_minor * 10 ** (theirs - ours)
        else:
            step = 10 ** (ours - theirs)
            if amount_minor % step:
                raise ValidationFailed(
                    f"{self.processor} takes {currency} amounts with {theirs} decimals; "
                    f"{format_display(amount_minor, currency)} cannot be sent without rounding",
                    fields=["amount_minor"],
                )
            wire = amount_minor // step
        multiple = self.wire_multiple.get(currency)
        if multiple and wire % multiple:
            raise ValidationFailed(
                f"{self.processor} takes {currency} amounts only in steps of {multiple} of its units "
                f"({self.source}); {format_display(amount_minor, currency)} cannot be sent without rounding",
                fields=["amount_minor"],
            )
        return wire

    def from_wire(self, wire: int | None, currency: str, *, what: str) -> int:
        """The processor's integer amount to our minor units. IncompleteAnswer when absent or inexact."""
        if wire is None:
            raise IncompleteAnswer(f"{self.processor}'s answer has no {what}")
        try:
            ours, theirs = currency_exponent(currency), self.decimals_of(currency)
        except ValidationFailed as exc:
            raise IncompleteAnswer(exc.message) from exc
        if ours >= theirs:
            return wire * 10 ** (ours - theirs)
        step = 10 ** (theirs - ours)
        if wire % step:
            raise IncompleteAnswer(
                f"{self.processor} answered {what} {wire} in {currency}, a fraction refund-mcp cannot hold exactly"
            )
        return wire // step

    def to_decimal(self, amount_minor: int, currency: str) -> str:
        """Our minor units as the processor's decimal string ("10.00", "1500", "1.250")."""
        wire = self.to_wire(amount_minor, currency)
        places = self.decimals_of(currency)
        return str(Decimal(wire).scaleb(-places)) if places else str(wire)

    def from_decimal(self, value: str | None, currency: str, *, what: str) -> int:
        """A processor's decimal string to our minor units, exactly (the string is a value in major units)."""
        if value is None:
            raise IncompleteAnswer(f"{self.processor}'s answer has no {what}")
        try:
            parsed = Decimal(value)
            scaled = parsed.scaleb(currency_exponent(currency))
        except (ArithmeticError, ValueError, ValidationFailed) as exc:
            raise IncompleteAnswer(f"{self.processor} answered {what} {value!r}, which is not an amount") from exc
        if not scaled.is_finite() or scaled != scaled.to_integral_value():
            raise IncompleteAnswer(
                f"{self.processor} answered {what} {value!r} in {currency}, a fraction refund-mcp cannot hold exactly"
            )
        return int(scaled)
