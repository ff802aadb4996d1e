"""The request models: every input's constraints, written once for validation and the OpenAPI."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

# [0-9], not \d or str.isdigit: those take '²' and '٣', which int() then refuses or misreads.
DECIMAL = re.compile("-?[0-9]+")
# Metadata filters of /similar (query) and /search (form) are named filter.<field>: any other
# unknown name is refused, so that a cache-buster such as `_=1234` never filters.
FILTER_PREFIX = "filter."


def decimal(value: Any) -> Any:
    """Request text as an int: ASCII decimal digits, optionally negative, and nothing else."""
    if isinstance(value, str):
        if not DECIMAL.fullmatch(value):
            raise ValueError("not a decimal integer")
        return int(value)
    return value


AsDecimal = BeforeValidator(decimal)

ProductId = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$",
        description="1-128 characters of A-Z a-z 0-9 . _ : -, starting with a letter or digit",
        examples=["shirt-1"],
    ),
]
TaskId = Annotated[
    str,
    Field(description="the task_id of a 202 answer", examples=["0f8fad5bd9cb469fa16570867728950e"]),
]
# The validator comes after Field, so it wraps the constrained int (minimum, maximum in the schema).
K = Annotated[int, Field(ge=1, le=100, description="how many neighbours to return"), AsDecimal]
Cursor = Annotated[
    int,
    # Redis SSCAN cursors are unsigned 64-bit: a larger one is a Redis error, not an empty page.
    Field(ge=0, le=2**64 - 1, description="next_cursor of the previous page; 0 starts"),
    AsDecimal,
]
Limit = Annotated[
    int, Field(ge=1, le=5000, description="about how many products a page holds"), AsDecimal
]

PageNumber = Annotated[
    int, Field(ge=1, le=10**6, description="page of the gallery's grid"), AsDecimal
]


class Request(BaseModel):
    """Base of the models: strict types (text is parsed by validators) and unknown keys ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class ProductPath(Request):
    """The path of /products/{product_id} and below."""

    product_id: ProductId


class TaskPath(Request):
    """The path of /tasks/{task_id}."""

    task_id: TaskId


class ProductPageQuery(Request):
    """The query of GET /products."""

    cursor: Cursor = 0
    limit: Limit = 500


class NeighboursQuery(Request):
    """The query of GET /products/{product_id}/similar and the form of POST /search."""

    k: K = 5


class ProductForm(Request):
    """The form of POST /products, besides its image."""

    product_id: ProductId
    metadata: str = Field("", description="a JSON object; absent or empty: {}")


class GridQuery(Request):
    """The query of the gallery's catalog grid."""

    page: PageNumber = 1
