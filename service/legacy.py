"""The two endpoints of the services this one replaces, unchanged on the wire."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)

from mailcore.errors import InvalidRequest
from mailcore.jsonlimits import check_json
from mailcore.locales import MAX_TAG, check_locale
from mailcore.message import EmailAddress, HeaderText, Recipient, SendRequest, error_details

M = TypeVar("M", bound=BaseModel)


def _number_to_str(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Text = Annotated[str, BeforeValidator(_number_to_str)]
Locale = Annotated[str, Field(max_length=MAX_TAG), AfterValidator(check_locale)]


class ResetCodeRequest(BaseModel):
    """``POST /email-service/send-reset-code`` (extra fields are ignored, as before)."""

    model_config = ConfigDict(extra="ignore")

    email: EmailAddress
    code: Annotated[Text, Field(min_length=1, max_length=64)]
    #: Optional (not in the original contract): a BCP 47 tag; else ``Accept-Language``.
    locale: Locale | None = None


class Customer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: Annotated[HeaderText, Field(min_length=1, max_length=200)]
    email: EmailAddress
    address: Annotated[str, Field(max_length=1000)] | None = None
    phone: Annotated[str, Field(max_length=64)] | None = None


class OrderItem(BaseModel):
    model_config = ConfigDict(extra="ignore")

    product_id: Annotated[Text, Field(max_length=128)]
    name: Annotated[str, Field(min_length=1, max_length=500)]
    quantity: Annotated[int, Field(ge=1)]
    price: Annotated[float, Field(ge=0)]


class OrderConfirmation(BaseModel):
    """``POST /api/order-confirmation``."""

    model_config = ConfigDict(extra="ignore")

    order_id: Annotated[Text, Field(min_length=1, max_length=128)]
    customer: Customer
    items: Annotated[list[OrderItem], Field(min_length=1, max_length=500)]
    total: Annotated[float, Field(ge=0)]
    order_date: Annotated[str, Field(max_length=64)] | None = None
    shipping_method: Annotated[str, Field(max_length=200)] | None = None
    estimated_delivery: Annotated[str, Field(max_length=64)] | None = None
    notes: Annotated[str, Field(max_length=2000)] | None = None
    #: Optional (not in the original contract): a BCP 47 tag; else ``Accept-Language``.
    locale: Locale | None = None


def parse_reset(body: dict[str, Any], template: str) -> SendRequest:
    """The reset-code contract (the HTTP adapter answers its refusals with 400, as the
    original service did)."""
    reset = _validate(ResetCodeRequest, body)
    return SendRequest(
        template=template,
        to=[Recipient(email=reset.email)],
        data={"email": reset.email, "code": reset.code},
        locale=reset.locale,
    )


def parse_order(body: dict[str, Any], template: str) -> SendRequest:
    order = _validate(OrderConfirmation, body)
    customer = order.customer
    return SendRequest(
        template=template,
        to=[Recipient(email=customer.email, name=customer.name)],
        data=order.model_dump(mode="json", exclude={"locale"}),
        locale=order.locale,
    )


def _validate(model: type[M], body: dict[str, Any]) -> M:
    check_json(body)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        details = error_details(exc)
        missing = [d["field"] for d in details if d["message"] == "Field required"]
        message = (f"missing required field(s): {', '.join(missing)}" if missing
                   else f"{details[0]['field']}: {details[0]['message']}")
        raise InvalidRequest(message, details=details) from None
