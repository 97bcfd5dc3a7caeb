"""Request and response bodies of the recommendation API: strict pydantic models.

Strict on purpose: unknown fields, wrong JSON types ("10" for k, 1.5 or true for an id), NaN and
Infinity are 422s with a message naming the field, never a silent coercion and never a 5xx. Item and
user ids are the original ids of the data (strings; JSON integers are accepted and read as their
decimal string, so ml-100k's `242` and `"242"` are the same item). Lists are capped so a request's
cost is bounded before any model work; the byte size of a body is capped separately (413).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

MAX_K = 1000  # the most items one /recommend may ask for (then clipped to the catalog)
MAX_IDS = 1000  # the most ids in one history / exclude / events list
MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 10_000  # item text for /items; the encoder reads its first 256 word pieces anyway


def _unicode(text: str) -> str:
    """JSON may carry lone UTF-16 surrogates ("\\udfff"), which no answer can be written with."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (it holds a lone UTF-16 surrogate)") from None
    return text


def _id_text(value: str | int) -> str:
    text = _unicode(str(value))
    if not text or len(text) > MAX_ID_CHARS:
        raise ValueError(f"an id must be 1..{MAX_ID_CHARS} characters")
    return text


# An original item or user id: a string or a JSON integer, always handed on as a string.
Id = Annotated[StrictStr | StrictInt, AfterValidator(_id_text)]


EVENT_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"  # lower-case words: click, add_to_cart
MAX_TIMESTAMP = 1e11  # seconds since the epoch (year 5138): a bigger number is milliseconds or garbage


class Strict(BaseModel):
    """Base of every body: unknown fields and NaN/Infinity are rejected, types are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class RecommendRequest(Strict):
    """POST /recommend. Give `history` (most recent last), or `user_id` alone to use the user's
    stored history (training data plus events posted since); an explicit history wins."""

    user_id: Id | None = None
    history: list[Id] | None = Field(None, max_length=MAX_IDS)
    k: int = Field(10, ge=1, le=MAX_K, description=f"1..{MAX_K}; clipped to the recommendable catalog")
    exclude_seen: bool = Field(True, description="leave out items already in the history")
    exclude: list[Id] = Field(default_factory=list, max_length=MAX_IDS, description="item ids never to return")

    @model_validator(mode="after")
    def _needs_user_or_history(self) -> RecommendRequest:
        if self.user_id is None and self.history is None:
            raise ValueError("give user_id, history, or both")
        return self


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendResponse(BaseModel):
    """Top-k items, best first. `fallback` names the ranking used when the model could not be
    (`popularity`: empty or all-unknown history); `unknown_items` lists ignored ids."""

    items: list[ScoredItem]
    model_version: str
    fallback: Literal["popularity"] | None = None
    unknown_items: list[str] = Field(default_factory=list)
    variant: str = Field(description="the A/B variant that answered (the user's; the first for no user_id)")
    request_id: str = Field(description="names this answer: send it back with POST /feedback")


class EventsRequest(Strict):
    """POST /events: the user's new interactions, oldest first; reflected by the next /recommend
    (events of a negative type, `data.negative_events` of the served model, are logged for training
    but kept out of the history)."""

    user_id: Id
    item_ids: list[Id] = Field(min_length=1, max_length=MAX_IDS)
    event: str = Field("click", pattern=EVENT_PATTERN, description="event type of every item: click, purchase, skip...")
    timestamp: float | int | None = Field(
        None, gt=0, lt=MAX_TIMESTAMP, description="seconds since the epoch (default: when the request arrives)"
    )


class EventsResponse(BaseModel):
    user_id: str
    appended: int
    event: str = "click"
    live_events: int | None = Field(
        description="events held for this user since the model was trained (capped); null when the live store "
        "is restarting: the events are durable in the event log and reach it from there"
    )
    unknown_items: list[str] = Field(default_factory=list, description="ids not in the served catalog (still stored)")


class FeedbackRequest(Strict):
    """POST /feedback: what the user did with a recommended item (logged for `raysys abtest`, and as an
    interaction of the user, like POST /events)."""

    request_id: Annotated[StrictStr, AfterValidator(_unicode)] | None = Field(
        None, min_length=1, max_length=64, description="the /recommend answer's request_id the item was shown in"
    )
    user_id: Id
    item_id: Id
    event: Literal["click", "purchase", "skip"]
    timestamp: float | int | None = Field(
        None, gt=0, lt=MAX_TIMESTAMP, description="seconds since the epoch (default: when the request arrives)"
    )


class FeedbackResponse(BaseModel):
    request_id: str | None
    user_id: str
    item_id: str
    event: str
    variant: str = Field(description="the user's A/B variant now (the analysis prefers the request_id's)")
    live_events: int | None = Field(description="as for POST /events")


class ItemRequest(Strict):
    """POST /items: a new item, scored from its text embedding (models trained with item text)."""

    item_id: Id
    text: Annotated[StrictStr, AfterValidator(_unicode)] = Field(min_length=1, max_length=MAX_TEXT_CHARS)


class ItemResponse(BaseModel):
    item_id: str
    catalog_size: int
    model_version: str


class HealthResponse(BaseModel):
    status: Literal["ok"]
    model_version: str


class VariantInfo(BaseModel):
    name: str
    weight: float
    share: float = Field(description="share of the users (of the 10,000 buckets)")
    model_version: str


class MetadataResponse(BaseModel):
    model_version: str
    trained_at: str | None
    catalog_size: int = Field(description="recommendable items, including ones added through /items")
    added_items: int
    uses_text: bool
    max_len: int
    batching: bool
    variants: list[VariantInfo] = Field(description="the A/B variants, in order (one, 'default', without a test)")
    log_impressions: bool
